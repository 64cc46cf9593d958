"""Palisade's security baseline as a Pulumi policy pack: `pulumi up --policy-pack infra/policy`.

Every rule is mandatory: a violation stops the preview or update. The checks themselves are plain
functions in policy_rules.py (tests/infra/test_policy.py, and test_policy_mutations.py, which
weakens the example stack one property at a time and expects a refusal for each).

Resource rules see the resource's inputs; the engine attaches its URN to each report, and every
message starts with the resource's type and logical name. Stack rules see every resource's outputs
and report the URN of the resource a finding is about (none for something missing from the stack).
The few deliberate opt-outs are policy config (`--policy-pack-config`), listed in RULE_CONFIG.
"""

import policy_rules
from pulumi_policy import (
    EnforcementLevel,
    PolicyConfigSchema,
    PolicyPack,
    ResourceValidationPolicy,
    StackValidationPolicy,
)


def _description(check) -> str:
    return " ".join((check.__doc__ or check.__name__).split())


def _config_schema(name):
    properties = policy_rules.RULE_CONFIG.get(name)
    return PolicyConfigSchema(properties=properties) if properties else None


def _config(args, name) -> dict:
    return dict(args.get_config() or {}) if name in policy_rules.RULE_CONFIG else {}


def _resource_policy(name, check):
    def validate(args, report_violation):
        resource = policy_rules.Resource(args.resource_type, args.name, args.props, args.urn)
        for message in check(resource, _config(args, name)):
            report_violation(message, args.urn)

    return ResourceValidationPolicy(
        name=name,
        description=_description(check),
        validate=validate,
        enforcement_level=EnforcementLevel.MANDATORY,
        config_schema=_config_schema(name),
    )


def _stack_policy(name, check):
    def validate(args, report_violation):
        resources = [policy_rules.Resource(r.resource_type, r.name, r.props, r.urn) for r in args.resources]
        for violation in check(resources, _config(args, name)):
            report_violation(violation.message, violation.urn)

    return StackValidationPolicy(
        name=name,
        description=_description(check),
        validate=validate,
        enforcement_level=EnforcementLevel.MANDATORY,
        config_schema=_config_schema(name),
    )


PolicyPack(
    name="palisade-baseline",
    enforcement_level=EnforcementLevel.MANDATORY,
    policies=[
        *(_resource_policy(name, check) for name, check in policy_rules.RESOURCE_RULES.items()),
        *(_stack_policy(name, check) for name, check in policy_rules.STACK_RULES.items()),
    ],
)
