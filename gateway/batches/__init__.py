"""Batch comparison (数据比对): one policy's check of many enterprises as one job, cut into chunks on a job queue."""
