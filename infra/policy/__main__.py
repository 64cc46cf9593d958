"""Palisade's security baseline as a Pulumi policy pack: `pulumi up --policy-pack infra/policy`.

Every rule is mandatory: a violation stops the preview or update. The checks themselves are plain
functions in policy_rules.py (unit tested in tests/infra/test_policy.py).
"""

import policy_rules
from pulumi_policy import (
    EnforcementLevel,
    PolicyPack,
    ResourceValidationPolicy,
    StackValidationPolicy,
)


def _resource_policy(name, check):
    def validate(args, report_violation):
        for message in check(args.resource_type, args.props):
            report_violation(message)

    return ResourceValidationPolicy(
        name=name,
        description=(check.__doc__ or name).strip().splitlines()[0],
        validate=validate,
        enforcement_level=EnforcementLevel.MANDATORY,
    )


def _stack_policy(name, check):
    def validate(args, report_violation):
        for message in check((r.resource_type, r.props) for r in args.resources):
            report_violation(message)

    return StackValidationPolicy(
        name=name,
        description=(check.__doc__ or name).strip().splitlines()[0],
        validate=validate,
        enforcement_level=EnforcementLevel.MANDATORY,
    )


PolicyPack(
    name="palisade-baseline",
    enforcement_level=EnforcementLevel.MANDATORY,
    policies=[
        *(_resource_policy(name, check) for name, check in policy_rules.RESOURCE_RULES.items()),
        *(_stack_policy(name, check) for name, check in policy_rules.STACK_RULES.items()),
    ],
)
