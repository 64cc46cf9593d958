"""Resource options for a component's children.

Pulumi does not hand a component's `depends_on` to the resources declared inside it: a child
waits only for what its own inputs and options name. So a component that must come after another
(a role assignment on a secret after the secret, the migration after the database's administrator)
passes what it waits for to each child through `children_of`.
"""

from __future__ import annotations

from typing import Any

import pulumi


def children_of(component: pulumi.Resource, opts: pulumi.ResourceOptions | None, **extra: Any) -> pulumi.ResourceOptions:
    """Options for a child of `component`: parented to it, waiting for what the component waits for
    (its `opts.depends_on`) and for `extra["depends_on"]`; other `extra` options as given."""
    inherited = opts.depends_on if opts is not None and opts.depends_on is not None else []
    inherited = [inherited] if isinstance(inherited, pulumi.Resource) else list(inherited)
    own = extra.pop("depends_on", [])
    depends_on = [*inherited, *own]
    return pulumi.ResourceOptions(parent=component, depends_on=depends_on or None, **extra)
