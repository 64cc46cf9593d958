"""Monitoring: the Log Analytics workspace (vault audit logs, Container Apps logs) and the
workspace-based Application Insights component the app's traces land in."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pulumi
import pulumi_azure_native.applicationinsights as applicationinsights
import pulumi_azure_native.operationalinsights as operationalinsights

from .options import children_of


@dataclass
class MonitoringArgs:
    prefix: str
    location: str
    resource_group_name: pulumi.Input[str]
    retention_days: int
    tags: Mapping[str, str] = field(default_factory=dict)


class Monitoring(pulumi.ComponentResource):
    workspace_id: pulumi.Output[str]
    app_insights_connection_string: pulumi.Output[str]

    def __init__(self, name: str, args: MonitoringArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("palisade:infra:Monitoring", name, None, opts)
        child = children_of(self, opts)

        workspace = operationalinsights.Workspace(
            f"{name}-logs",
            resource_group_name=args.resource_group_name,
            location=args.location,
            workspace_name=f"log-{args.prefix}",
            sku=operationalinsights.WorkspaceSkuArgs(name="PerGB2018"),
            retention_in_days=args.retention_days,
            tags=dict(args.tags),
            opts=child,
        )
        insights = applicationinsights.Component(
            f"{name}-insights",
            resource_group_name=args.resource_group_name,
            location=args.location,
            resource_name_=f"appi-{args.prefix}",
            kind="web",
            application_type="web",
            workspace_resource_id=workspace.id,
            ingestion_mode="LogAnalytics",
            # Client IPs are personal data: keep Azure's masking on.
            disable_ip_masking=False,
            tags=dict(args.tags),
            opts=children_of(self, opts, additional_secret_outputs=["connectionString", "instrumentationKey"]),
        )

        self.workspace_id = workspace.id
        # An ingestion key, not a credential for reading data, but still kept out of plain outputs.
        self.app_insights_connection_string = pulumi.Output.secret(insights.connection_string)
        self.register_outputs({"workspace_id": self.workspace_id})
