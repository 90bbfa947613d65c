"""Governance: what lets people cap and steer agents. Below the agent pool and the market, which use it.

    budgets.Budgets       limits per agent and requester and metric, reserved before work and settled after;
                          spend per minute for plots; a soft limit raises an approval, a hard one stops dispatch
    approvals.Approvals   durable approvals decided exactly once (by an operator, or by expiry), with handlers
                          that run in the deciding transaction
    models                the budgets' inputs and what callers read back
"""
