//! Lease logic: the money paths as persisted state machines (see `journal`), seeing the outside world only
//! through the traits in `ports`.

pub mod admission;
pub mod image;
pub mod journal;
pub mod ports;
pub mod service;

pub use service::{LeaseService, LeaseSettings, Ports};

use ports::ReplyRoute;

use crate::protocol::{ErrorCode, LeaseRequest, ReleaseRequest, StatusRequest, TopUpRequest};

/// A decoded request, as a front end (Nostr or HTTP) hands it to the lease logic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    Create {
        route: ReplyRoute,
        request: LeaseRequest,
    },
    TopUp {
        route: ReplyRoute,
        request: TopUpRequest,
    },
    Status {
        route: ReplyRoute,
        request: StatusRequest,
    },
    /// The owner ends the lease early; unused whole minutes are refunded.
    Release {
        route: ReplyRoute,
        request: ReleaseRequest,
    },
    /// Addressed to us but unusable (garbage, oversize, undecryptable): answered with `code`, nothing else.
    Invalid {
        route: ReplyRoute,
        code: ErrorCode,
        message: String,
    },
}

impl Incoming {
    pub fn route(&self) -> &ReplyRoute {
        match self {
            Incoming::Create { route, .. }
            | Incoming::TopUp { route, .. }
            | Incoming::Status { route, .. }
            | Incoming::Release { route, .. }
            | Incoming::Invalid { route, .. } => route,
        }
    }
}

#[cfg(test)]
mod tests;
