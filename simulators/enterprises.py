"""The simulated enterprises every simulator answers about: 300 of them, generated from a fixed seed, and a register
of MSJX_SIM_REGISTER_SIZE more (100,000 by default) made on demand, so that a batch meets real data.

The same population backs the credit, tax, market-registration and treasury simulators, so one USCC tells one
consistent story everywhere. All of it is drawn at random: a name, ID number or phone number that matches a real
one does so by chance, so treat them as personal data anyway (masked in logs, as the gateway does).
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from functools import lru_cache
from types import MappingProxyType

from schemas.uscc import USCC_ALPHABET, is_valid_uscc, make_uscc

__all__ = [
    "DEMO_LISTED_USCC",
    "DEMO_USCC",
    "ENTERPRISES",
    "IN_OPERATION",
    "SEED",
    "TAX_YEARS",
    "DishonestCase",
    "Enterprise",
    "LegalRepresentative",
    "Listing",
    "by_uscc",
    "register_uscc",
]

SEED = 20210801  # 2021-08-01, around when the Xiamen and Quanzhou plans were issued
POPULATION = 300
TAX_YEARS = (2023, 2024, 2025)
IN_OPERATION = frozenset({"存续", "在业"})


@dataclass(frozen=True, slots=True)
class LegalRepresentative:
    name: str
    id_number: str  # 18-digit resident ID (GB 11643) with a valid ISO 7064 MOD 11-2 check character
    phone: str


@dataclass(frozen=True, slots=True)
class DishonestCase:
    """An enforcement case behind a 失信被执行人 listing."""

    court: str
    case_number: str
    filed_on: date
    amount: Decimal
    obligation: str
    performance: str


@dataclass(frozen=True, slots=True)
class Listing:
    """An entry of 经营异常名录, 严重违法失信名单 or 重大税收违法失信主体."""

    reason: str
    listed_on: date
    authority: str


@dataclass(frozen=True, slots=True)
class Enterprise:
    uscc: str
    name: str
    status: str  # 存续, 在业, 注销 or 吊销, as the market-registration system writes it
    established_on: date
    registered_capital: Decimal  # yuan
    industry: str  # GB/T 4754-2017 code with its section letter, e.g. C3911
    region: str  # 6-digit administrative division code (GB/T 2260)
    legal_representative: LegalRepresentative
    tax_ratings: Mapping[int, str]  # year -> 纳税信用等级 A/B/M/C/D
    tax_paid: Mapping[int, Decimal]  # year -> tax paid in yuan
    dishonest_cases: tuple[DishonestCase, ...] = ()
    abnormal_operations: tuple[Listing, ...] = ()
    serious_violations: tuple[Listing, ...] = ()
    major_tax_violations: tuple[Listing, ...] = ()

    # The mappings are read-only views, which do not hash; the USCC identifies an enterprise anyway.
    def __hash__(self) -> int:
        return hash(self.uscc)

    @property
    def in_operation(self) -> bool:
        return self.status in IN_OPERATION

    @property
    def dishonest_debtor(self) -> bool:
        return bool(self.dishonest_cases)

    @property
    def listed_anywhere(self) -> bool:
        return bool(
            self.dishonest_cases or self.abnormal_operations or self.serious_violations or self.major_tax_violations
        )


# code -> (city, district, province abbreviation used in case numbers); weights favour the seeds' own places.
_REGIONS: dict[str, tuple[str, str, str]] = {
    "350203": ("厦门", "思明区", "闽"),
    "350205": ("厦门", "海沧区", "闽"),
    "350206": ("厦门", "湖里区", "闽"),
    "350211": ("厦门", "集美区", "闽"),
    "350212": ("厦门", "同安区", "闽"),
    "350213": ("厦门", "翔安区", "闽"),
    "350502": ("泉州", "鲤城区", "闽"),
    "350503": ("泉州", "丰泽区", "闽"),
    "350505": ("泉州", "泉港区", "闽"),
    "350524": ("泉州", "安溪县", "闽"),
    "350581": ("泉州", "石狮市", "闽"),
    "350582": ("泉州", "晋江市", "闽"),
    "350583": ("泉州", "南安市", "闽"),
    "411302": ("南阳", "宛城区", "豫"),
    "411303": ("南阳", "卧龙区", "豫"),
    "411381": ("南阳", "邓州市", "豫"),
    "310101": ("上海", "黄浦区", "沪"),
    "310104": ("上海", "徐汇区", "沪"),
    "310106": ("上海", "静安区", "沪"),
    "310110": ("上海", "杨浦区", "沪"),
    "310112": ("上海", "闵行区", "沪"),
    "310115": ("上海", "浦东新区", "沪"),
}
_REGION_WEIGHTS = {"350206": 3, "350211": 2, "350582": 3, "411303": 4, "310115": 3}

# GB/T 4754-2017 class -> the word a company of that trade puts in its name.
_INDUSTRIES = {
    "C3911": "电子科技",
    "C3973": "微电子",
    "C3831": "电缆",
    "C3670": "汽车配件",
    "C1810": "服饰",
    "C1952": "鞋业",
    "C2929": "塑胶制品",
    "C3032": "石材",
    "C1530": "茶业",
    "C2710": "药业",
    "C2740": "艾草制品",
    "E4710": "建设工程",
    "F5199": "贸易",
    "G5821": "供应链管理",
    "H6210": "餐饮管理",
    "I6513": "软件",
    "I6531": "信息技术",
    "M7320": "技术研究",
}

_TRADE_NAME_CHARS = "鑫源恒泰华盛瑞丰嘉禾宏达永安兴隆信诚德润博远天成金海晟通联创汇明辉锦程鹏宇东方新航"
_SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何林罗郑梁谢宋唐许韩冯邓曹彭曾萧田董潘袁蔡蒋余"
_GIVEN_CHARS = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华建国志红文斌宇浩凯鹏晨欣雪婷"
_PHONE_PREFIXES = ("135", "136", "137", "138", "139", "150", "151", "158", "159", "186", "187", "188", "189", "199")

_OBLIGATIONS = (
    "支付货款及逾期付款利息",
    "支付工程款及违约金",
    "偿还借款本金及利息",
    "支付拖欠的劳动报酬",
    "支付租金及物业管理费",
    "赔偿经济损失并承担案件受理费",
)
_PERFORMANCES = ("全部未履行", "全部未履行", "部分未履行")
_ABNORMAL_REASONS = (
    "未依照《企业信息公示暂行条例》第八条规定的期限公示年度报告",
    "通过登记的住所或者经营场所无法联系",
    "公示企业信息隐瞒真实情况、弄虚作假",
    "未在市场监督管理部门依照《企业信息公示暂行条例》第十条规定责令的期限内公示有关企业信息",
)
_SERIOUS_REASONS = (
    "被列入经营异常名录届满3年仍未履行相关义务",
    "提交虚假材料或者采取其他欺诈手段隐瞒重要事实，取得公司登记，被撤销登记",
    "因生产销售不符合安全标准的产品受到较重行政处罚",
)
_TAX_VIOLATION_REASONS = (
    "虚开增值税专用发票",
    "偷税，查补税款金额100万元以上且占应纳税额10%以上",
    "逃避追缴欠税，欠缴税款金额10万元以上",
)
_ID_WEIGHTS = tuple(pow(2, 17 - i, 11) for i in range(17))  # ISO 7064 MOD 11-2: 7, 9, 10, 5, 8, 4, 2, 1, 6, 3, ...


def _id_check(body: str) -> str:
    return "10X98765432"[sum(int(d) * w for d, w in zip(body, _ID_WEIGHTS, strict=True)) % 11]


def _organization_code(rng: random.Random) -> str:
    """Positions 9-17 of a USCC: a GB 11714 organization code, 8 characters and its own check character."""
    # Codes issued since the 2015 reform start with MA; the rest of the body uses the USCC alphabet.
    body = "MA" + "".join(rng.choice(USCC_ALPHABET) for _ in range(6))
    values = [int(c) if c.isdigit() else ord(c) - 55 for c in body]  # A=10 ... Z=35
    check = 11 - sum(v * w for v, w in zip(values, (3, 7, 9, 10, 5, 8, 4, 2), strict=True)) % 11
    return body + {10: "X", 11: "0"}.get(check, str(check))


def _money(rng: random.Random, low: int, high: int) -> Decimal:
    # Draw whole fen and scale by an exact power of ten: no float ever touches an amount.
    return Decimal(rng.randint(low * 100, high * 100)).scaleb(-2)


def _day(rng: random.Random, first: date, last: date) -> date:
    return first + timedelta(days=rng.randint(0, (last - first).days))


def _person(rng: random.Random, regions: list[str]) -> LegalRepresentative:
    name = rng.choice(_SURNAMES) + "".join(rng.choice(_GIVEN_CHARS) for _ in range(rng.choice((1, 2, 2))))
    born = _day(rng, date(1960, 1, 1), date(1995, 12, 31))
    body = f"{rng.choice(regions)}{born:%Y%m%d}{rng.randint(1, 999):03d}"
    phone = rng.choice(_PHONE_PREFIXES) + f"{rng.randint(0, 99_999_999):08d}"
    return LegalRepresentative(name=name, id_number=body + _id_check(body), phone=phone)


def _locality(region: str) -> str:
    """厦门市思明区, but 晋江市 and 安溪县: county-level cities and counties are named on their own."""
    city, district, _ = _REGIONS[region]
    return district if district.endswith(("市", "县")) else f"{city}市{district}"


def _dishonest_cases(rng: random.Random, region: str) -> tuple[DishonestCase, ...]:
    _, _, province = _REGIONS[region]
    cases = []
    for _ in range(rng.randint(1, 3)):
        filed = _day(rng, date(2019, 1, 1), date(2025, 6, 30))
        cases.append(
            DishonestCase(
                court=f"{_locality(region)}人民法院",
                # （year）province + court code (digits 3-6 of the region) + 执 + serial, as courts write it
                case_number=f"（{filed.year}）{province}{region[2:]}执{rng.randint(100, 19999)}号",
                filed_on=filed,
                amount=_money(rng, 5_000, 5_000_000),
                obligation=rng.choice(_OBLIGATIONS),
                performance=rng.choice(_PERFORMANCES),
            )
        )
    return tuple(sorted(cases, key=lambda case: case.filed_on))


def _listings(rng: random.Random, reasons: tuple[str, ...], authority: str, since: date) -> tuple[Listing, ...]:
    return (Listing(rng.choice(reasons), _day(rng, since, date(2025, 6, 30)), authority),)


def _market_authority(region: str) -> str:
    # Shanghai's districts keep their own market-regulation bureaus; elsewhere the city bureau decides.
    city = _REGIONS[region][0]
    return f"{_locality(region)}市场监督管理局" if city == "上海" else f"{city}市市场监督管理局"


def _tax_authority(region: str) -> str:
    return f"国家税务总局{_locality(region)}税务局"


def _next_rating(rng: random.Random, previous: str | None) -> str:
    if previous is not None and rng.random() < 0.7:  # ratings are sticky from one year to the next
        return previous
    return rng.choices("ABMCD", weights=(30, 45, 8, 12, 5))[0]


def _generate() -> tuple[Enterprise, ...]:
    rng = random.Random(SEED)
    regions = list(_REGIONS)
    weights = [_REGION_WEIGHTS.get(code, 1) for code in regions]
    industries = list(_INDUSTRIES)

    # Exact shares (8 %, 5 %, 2 %, 2 %) rather than per-enterprise coin flips, so tests can count them.
    indices = range(POPULATION)
    dishonest = set(rng.sample(indices, POPULATION * 8 // 100))
    abnormal = set(rng.sample(indices, POPULATION * 5 // 100))
    serious = set(rng.sample(indices, POPULATION * 2 // 100))
    tax_violation = set(rng.sample(indices, POPULATION * 2 // 100))

    seen_codes: set[str] = set()
    seen_names: set[str] = set()
    enterprises = []
    for index in indices:
        region = rng.choices(regions, weights)[0]
        city = _REGIONS[region][0]
        industry = rng.choice(industries)

        uscc = make_uscc("91", region, _organization_code(rng))
        while uscc in seen_codes:
            uscc = make_uscc("91", region, _organization_code(rng))
        seen_codes.add(uscc)

        name = f"{city}{rng.choice(_TRADE_NAME_CHARS)}{rng.choice(_TRADE_NAME_CHARS)}{_INDUSTRIES[industry]}有限公司"
        while name in seen_names:
            name = (
                f"{city}{rng.choice(_TRADE_NAME_CHARS)}{rng.choice(_TRADE_NAME_CHARS)}{_INDUSTRIES[industry]}有限公司"
            )
        seen_names.add(name)

        status = rng.choices(("存续", "在业", "注销", "吊销"), weights=(70, 22, 5, 3))[0]
        established = _day(rng, date(1998, 1, 1), date(2023, 12, 31))
        capital = (Decimal(rng.choice((10, 30, 50, 100, 200, 500, 1000, 3000, 5000))) * 10_000).quantize(
            Decimal("0.01")
        )

        ratings: dict[int, str] = {}
        paid: dict[int, Decimal] = {}
        previous = None
        scale = rng.choice((20_000, 200_000, 2_000_000))
        for year in TAX_YEARS:
            previous = "M" if established.year >= year - 1 else _next_rating(rng, previous)
            ratings[year] = previous
            paid[year] = _money(rng, scale // 20, scale)

        tax_violations: tuple[Listing, ...] = ()
        if index in tax_violation:
            tax_violations = _listings(rng, _TAX_VIOLATION_REASONS, _tax_authority(region), date(2022, 1, 1))
            for year in TAX_YEARS:  # a major tax violation is rated D directly
                if year >= tax_violations[0].listed_on.year:
                    ratings[year] = "D"

        enterprises.append(
            Enterprise(
                uscc=uscc,
                name=name,
                status=status,
                established_on=established,
                registered_capital=capital,
                industry=industry,
                region=region,
                legal_representative=_person(rng, regions),
                tax_ratings=MappingProxyType(ratings),
                tax_paid=MappingProxyType(paid),
                dishonest_cases=_dishonest_cases(rng, region) if index in dishonest else (),
                abnormal_operations=(
                    _listings(rng, _ABNORMAL_REASONS, _market_authority(region), date(2021, 1, 1))
                    if index in abnormal
                    else ()
                ),
                serious_violations=(
                    _listings(rng, _SERIOUS_REASONS, _market_authority(region), date(2022, 1, 1))
                    if index in serious
                    else ()
                ),
                major_tax_violations=tax_violations,
            )
        )
    return tuple(enterprises)


ENTERPRISES: tuple[Enterprise, ...] = _generate()
_BY_USCC = {enterprise.uscc: enterprise for enterprise in ENTERPRISES}

# The register: enterprise i (0 <= i < REGISTER_SIZE) has the organization code "MB" + i in base 31 (six characters
# of the USCC alphabet), so its code tells its index and nothing needs to be stored. Drawn from its own seed.
REGISTER_SIZE = int(os.environ.get("MSJX_SIM_REGISTER_SIZE", "100000"))
_REGISTER_PREFIX = "MB"
_REGISTER_DIGITS = 6


_REGION_LIST = tuple(_REGIONS)
_INDUSTRY_LIST = tuple(_INDUSTRIES)


def _register_region(index: int) -> str:
    return _REGION_LIST[index % len(_REGION_LIST)]


def register_uscc(index: int) -> str:
    """The code of enterprise `index` of the register."""
    digits = []
    value = index
    for _ in range(_REGISTER_DIGITS):
        value, digit = divmod(value, len(USCC_ALPHABET))
        digits.append(USCC_ALPHABET[digit])
    body = _REGISTER_PREFIX + "".join(reversed(digits))
    values = [int(c) if c.isdigit() else ord(c) - 55 for c in body]
    check = 11 - sum(v * w for v, w in zip(values, (3, 7, 9, 10, 5, 8, 4, 2), strict=True)) % 11
    return make_uscc("91", _register_region(index), body + {10: "X", 11: "0"}.get(check, str(check)))


def _register_index(uscc: str) -> int | None:
    if len(uscc) != 18 or uscc[8:10] != _REGISTER_PREFIX:
        return None
    index = 0
    for char in uscc[10 : 10 + _REGISTER_DIGITS]:
        position = USCC_ALPHABET.find(char)
        if position < 0:
            return None
        index = index * len(USCC_ALPHABET) + position
    # The rest of the code is checked by its check character: cheaper than building the code again.
    return index if index < REGISTER_SIZE and uscc[2:8] == _register_region(index) and is_valid_uscc(uscc) else None


@lru_cache(maxsize=4096)
def _registered(index: int, uscc: str) -> Enterprise:
    rng = random.Random(SEED * 1_000_003 + index)
    region = _register_region(index)
    industry = rng.choice(_INDUSTRY_LIST)
    city = _REGIONS[region][0]
    established = _day(rng, date(1998, 1, 1), date(2023, 12, 31))
    ratings: dict[int, str] = {}
    paid: dict[int, Decimal] = {}
    previous = None
    scale = rng.choice((20_000, 200_000, 2_000_000))
    for year in TAX_YEARS:
        previous = "M" if established.year >= year - 1 else _next_rating(rng, previous)
        ratings[year] = previous
        paid[year] = _money(rng, scale // 20, scale)
    tax_violations: tuple[Listing, ...] = ()
    if rng.random() < 0.02:
        tax_violations = _listings(rng, _TAX_VIOLATION_REASONS, _tax_authority(region), date(2022, 1, 1))
        for year in TAX_YEARS:
            if year >= tax_violations[0].listed_on.year:
                ratings[year] = "D"
    return Enterprise(
        uscc=uscc,
        name=f"{city}{rng.choice(_TRADE_NAME_CHARS)}{rng.choice(_TRADE_NAME_CHARS)}{_INDUSTRIES[industry]}有限公司",
        status=rng.choices(("存续", "在业", "注销", "吊销"), weights=(70, 22, 5, 3))[0],
        established_on=established,
        registered_capital=(Decimal(rng.choice((10, 50, 100, 500, 1000))) * 10_000).quantize(Decimal("0.01")),
        industry=industry,
        region=region,
        legal_representative=_person(rng, _REGION_LIST),  # type: ignore[arg-type]
        tax_ratings=MappingProxyType(ratings),
        tax_paid=MappingProxyType(paid),
        dishonest_cases=_dishonest_cases(rng, region) if rng.random() < 0.08 else (),
        abnormal_operations=(
            _listings(rng, _ABNORMAL_REASONS, _market_authority(region), date(2021, 1, 1))
            if rng.random() < 0.05
            else ()
        ),
        serious_violations=(
            _listings(rng, _SERIOUS_REASONS, _market_authority(region), date(2022, 1, 1)) if rng.random() < 0.02 else ()
        ),
        major_tax_violations=tax_violations,
    )


def by_uscc(uscc: str) -> Enterprise | None:
    """The enterprise with this code (of the 300, or of the register), or None if there is none."""
    found = _BY_USCC.get(uscc)
    if found is not None:
        return found
    index = _register_index(uscc)
    return _registered(index, uscc) if index is not None else None


# For the demo line: an A-rated enterprise in operation that no list mentions, and a listed dishonest debtor.
DEMO_USCC: str = next(
    e.uscc for e in ENTERPRISES if e.in_operation and e.tax_ratings[2025] == "A" and not e.listed_anywhere
)
DEMO_LISTED_USCC: str = next(e.uscc for e in ENTERPRISES if e.in_operation and len(e.dishonest_cases) >= 2)
