//! The standard gRPC health check (`grpc.health.v1`) every busmq server
//! answers, so tools and gateways ask it through the SDK's own connection.

use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::Result;
use crate::bus::Bus;

/// What a server answers the health check for one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Up and taking work.
    Serving,
    /// Up but not taking work: a server draining after SIGTERM says so.
    NotServing,
    /// The server does not know the service asked about.
    ServiceUnknown,
    /// A status this SDK does not know (or UNKNOWN itself).
    Unknown,
}

impl Health {
    /// The status as the protocol names it (`SERVING`, `NOT_SERVING`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Serving => "SERVING",
            Health::NotServing => "NOT_SERVING",
            Health::ServiceUnknown => "SERVICE_UNKNOWN",
            Health::Unknown => "UNKNOWN",
        }
    }
}

impl From<i32> for Health {
    fn from(status: i32) -> Health {
        match ServingStatus::try_from(status) {
            Ok(ServingStatus::Serving) => Health::Serving,
            Ok(ServingStatus::NotServing) => Health::NotServing,
            Ok(ServingStatus::ServiceUnknown) => Health::ServiceUnknown,
            _ => Health::Unknown,
        }
    }
}

impl Bus {
    /// Asks the server this bus talks to (any busmq gRPC server answers)
    /// whether `service` is serving; `""` is the whole
    /// server. A server that does not know the service answers
    /// NOT_FOUND, reported as [`Health::ServiceUnknown`].
    pub async fn health(&self, service: &str) -> Result<Health> {
        let request = HealthCheckRequest {
            service: service.to_owned(),
        };
        match HealthClient::new(self.transport()).check(request).await {
            Ok(answer) => Ok(Health::from(answer.into_inner().status)),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(Health::ServiceUnknown),
            Err(status) => Err(status.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_keep_their_protocol_names() {
        assert_eq!(Health::from(ServingStatus::Serving as i32), Health::Serving);
        assert_eq!(
            Health::from(ServingStatus::NotServing as i32).as_str(),
            "NOT_SERVING"
        );
        assert_eq!(Health::from(99), Health::Unknown);
    }
}
