"""The simulated 免申即享 platform: the gateway's own first user, running 数据比对 → 意愿确认 → 政策兑现 through it.

Two policies: a 条件类 one (conditions matched against golden-tax, credit and market data) and a 名单类 one (a
department's CSV list of enterprises, validated line by line). Every data call and every payment goes through the
gateway with the platform's signed client; nothing here talks to a simulated upstream directly.
"""

from .csvlist import ListError, ListRejected, read_list
from .flow import PolicyReport, run_condition_policy, run_list_policy
from .policies import CONDITION_POLICY, LIST_POLICY, ConditionPolicy, ListPolicy

__all__ = [
    "CONDITION_POLICY",
    "LIST_POLICY",
    "ConditionPolicy",
    "ListError",
    "ListPolicy",
    "ListRejected",
    "PolicyReport",
    "read_list",
    "run_condition_policy",
    "run_list_policy",
]
