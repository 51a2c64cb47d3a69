//! Who is calling: the roles bearer tokens grant.

/// A caller's role, granted by the token it presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Mutations: configuration, farm actions, load tests; and every read.
    Admin,
    /// Node agents: register, heartbeat, read and watch configuration.
    Node,
    /// Reads and the dashboard.
    Viewer,
}

impl Role {
    /// The role's name, as written in configuration history.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Node => "node",
            Self::Viewer => "viewer",
        }
    }
}

/// How a call's writer is recorded: its role, or `open` when the control
/// plane runs without tokens (no role is attached to requests then).
pub fn writer(role: Option<Role>) -> &'static str {
    role.map_or("open", Role::as_str)
}
