//! Management roles and what each may do.

use std::fmt;
use std::str::FromStr;

/// An operator's management role; an admin key carries exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ManagementRole {
    /// Everything.
    Admin,
    /// Instances, keys and nodes; not admin keys or roles.
    Operator,
    /// Reads everything, the audit log included; changes nothing.
    Auditor,
    /// Reads instances, keys and nodes.
    Viewer,
}

/// One thing a management route does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    /// Read instances.
    InstancesRead,
    /// Create, change and decommission instances.
    InstancesWrite,
    /// Read instance keys' metadata.
    KeysRead,
    /// Issue, rotate, disable and revoke instance keys.
    KeysWrite,
    /// Read nodes.
    NodesRead,
    /// Register and retire nodes.
    NodesWrite,
    /// Read roles.
    RolesRead,
    /// Create, replace and delete roles.
    RolesWrite,
    /// Read admin keys' metadata.
    AdminKeysRead,
    /// Create and revoke admin keys.
    AdminKeysWrite,
    /// Read the audit log.
    AuditRead,
    /// Mint enrollment tokens.
    EnrollmentWrite,
    /// Read webhook endpoints and their deliveries.
    WebhooksRead,
    /// Register and delete webhook endpoints.
    WebhooksWrite,
    /// Rotate the keys that sign introspection answers.
    SigningKeysWrite,
    /// Read what keys used (requests and tokens, by model and hour or day).
    UsageRead,
}

impl Permission {
    /// Every permission.
    pub const ALL: [Permission; 16] = [
        Permission::InstancesRead,
        Permission::InstancesWrite,
        Permission::KeysRead,
        Permission::KeysWrite,
        Permission::NodesRead,
        Permission::NodesWrite,
        Permission::RolesRead,
        Permission::RolesWrite,
        Permission::AdminKeysRead,
        Permission::AdminKeysWrite,
        Permission::AuditRead,
        Permission::EnrollmentWrite,
        Permission::WebhooksRead,
        Permission::WebhooksWrite,
        Permission::SigningKeysWrite,
        Permission::UsageRead,
    ];
}

impl ManagementRole {
    /// Every role.
    pub const ALL: [ManagementRole; 4] = [
        ManagementRole::Admin,
        ManagementRole::Operator,
        ManagementRole::Auditor,
        ManagementRole::Viewer,
    ];

    /// Whether this role grants `permission`.
    pub fn allows(self, permission: Permission) -> bool {
        use Permission::*;
        match self {
            ManagementRole::Admin => true,
            // Operators read roles, since they issue keys that name them.
            ManagementRole::Operator => matches!(
                permission,
                InstancesRead
                    | InstancesWrite
                    | KeysRead
                    | KeysWrite
                    | NodesRead
                    | NodesWrite
                    | RolesRead
                    | EnrollmentWrite
                    | WebhooksRead
                    | UsageRead
            ),
            ManagementRole::Auditor => matches!(
                permission,
                InstancesRead
                    | KeysRead
                    | NodesRead
                    | RolesRead
                    | AdminKeysRead
                    | AuditRead
                    | WebhooksRead
                    | UsageRead
            ),
            ManagementRole::Viewer => matches!(permission, InstancesRead | KeysRead | NodesRead),
        }
    }

    /// The role's name.
    pub fn as_str(self) -> &'static str {
        match self {
            ManagementRole::Admin => "admin",
            ManagementRole::Operator => "operator",
            ManagementRole::Auditor => "auditor",
            ManagementRole::Viewer => "viewer",
        }
    }
}

impl fmt::Display for ManagementRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A text that is not a management role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("expected one of admin, operator, auditor, viewer")]
pub struct ManagementRoleError;

impl FromStr for ManagementRole {
    type Err = ManagementRoleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ManagementRole::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or(ManagementRoleError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auditors_and_viewers_change_nothing() {
        let writes = [
            Permission::InstancesWrite,
            Permission::KeysWrite,
            Permission::NodesWrite,
            Permission::RolesWrite,
            Permission::AdminKeysWrite,
            Permission::EnrollmentWrite,
            Permission::WebhooksWrite,
        ];
        for role in [ManagementRole::Auditor, ManagementRole::Viewer] {
            assert!(writes.iter().all(|p| !role.allows(*p)), "{role}");
        }
        assert!(!ManagementRole::Operator.allows(Permission::AdminKeysWrite));
        assert!(!ManagementRole::Operator.allows(Permission::RolesWrite));
        assert!(!ManagementRole::Viewer.allows(Permission::AuditRead));
        assert!(
            Permission::ALL
                .iter()
                .all(|p| ManagementRole::Admin.allows(*p))
        );
    }
}
