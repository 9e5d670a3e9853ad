-- wrk script of the msjx-gateway bench: replays pre-built raw HTTP requests, each sent once, and prints a summary.
--
-- Arguments (after `--`): <requests file or "-"> <cycle 0|1> <rate per second, 0 = as fast as possible>
-- The requests file holds complete HTTP/1.1 requests separated by NUL bytes, signed beforehand by the harness,
-- so the load generator never signs in its hot loop. With cycle=0 each request (and its nonce) is used once;
-- when they run out the thread sends the last one again, which the gateway refuses as a replay, and the
-- summary reports `exhausted` so the harness can reject the run. With "-" wrk's own request (the URL) is sent.
-- With a rate, delay() paces each thread on a schedule (open loop as long as connections suffice).

local ffi = require("ffi")
ffi.cdef([[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clock_id, bench_timespec *tp);
]])
local CLOCK_MONOTONIC = 1
local timespec = ffi.new("bench_timespec")

local function now_ms()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, timespec)
  return tonumber(timespec.tv_sec) * 1000 + tonumber(timespec.tv_nsec) / 1e6
end

local threads = {}
local thread_count = 0

function setup(thread)
  thread:set("thread_index", thread_count)
  thread_count = thread_count + 1
  table.insert(threads, thread)
end

-- Per-thread state (each wrk thread has its own Lua state).
local pool = {}
local pool_size = 0
local position = 0
local cycle = false
exhausted = 0
local interval_ms = 0
local next_slot = 0

function init(args)
  local path = args[1] or "-"
  cycle = args[2] == "1"
  local rate = tonumber(args[3] or "0") or 0
  local threads_total = tonumber(args[4] or "1") or 1
  if rate > 0 then
    interval_ms = 1000.0 * threads_total / rate
  end
  if path ~= "-" then
    local file = assert(io.open(path, "rb"))
    local data = file:read("*a")
    file:close()
    local start = 1
    local index = 0
    while start <= #data do
      local stop = string.find(data, "\0", start, true) or (#data + 1)
      -- Thread i takes every request whose index is i modulo the number of threads: disjoint nonces.
      if index % threads_total == thread_index then
        pool_size = pool_size + 1
        pool[pool_size] = string.sub(data, start, stop - 1)
      end
      index = index + 1
      start = stop + 1
    end
  end
end

if os.getenv("BENCH_REPLAY") == "1" then
  function request()
    if position < pool_size then
      position = position + 1
    elseif cycle then
      position = 1
    else
      exhausted = exhausted + 1
    end
    return pool[position]
  end
end

if os.getenv("BENCH_PACED") == "1" then
  function delay()
    local now = now_ms()
    if next_slot < now - 1000 then
      next_slot = now -- fallen far behind (a stall): do not burst to catch up
    end
    local slot = next_slot
    next_slot = next_slot + interval_ms
    if slot <= now then
      return 0
    end
    return slot - now
  end
end

function done(summary, latency, requests)
  local ran_out = 0
  for _, thread in ipairs(threads) do
    ran_out = ran_out + (thread:get("exhausted") or 0)
  end
  local errors = summary.errors
  io.write(string.format(
    'BENCH_SUMMARY {"requests": %d, "duration_us": %d, "connect_errors": %d, "read_errors": %d, '
      .. '"write_errors": %d, "status_errors": %d, "timeouts": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, '
      .. '"max_us": %d, "mean_us": %.1f, "exhausted": %d}\n',
    summary.requests, summary.duration, errors.connect, errors.read, errors.write, errors.status, errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean, ran_out
  ))
end
