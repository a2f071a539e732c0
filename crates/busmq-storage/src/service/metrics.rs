//! What the storage service records per session operation:
//! `busmq_storage_operations_total{op}` and
//! `busmq_storage_operation_duration_seconds{op}`.

use std::sync::OnceLock;
use std::time::Instant;

use busmq_proto::storage::v1::session_request::Op;
use metrics::{Counter, Histogram};

/// The `op` label of each operation, in [`index`] order.
const OPS: [&str; 8] = [
    "push",
    "take",
    "read",
    "ack",
    "lease",
    "settle",
    "take_many",
    "unknown",
];

fn index(op: Option<&Op>) -> usize {
    match op {
        Some(Op::Push(_)) => 0,
        Some(Op::Take(_)) => 1,
        Some(Op::Read(_)) => 2,
        Some(Op::Ack(_)) => 3,
        Some(Op::Lease(_)) => 4,
        Some(Op::Settle(_)) => 5,
        Some(Op::TakeMany(_)) => 6,
        None => 7,
    }
}

// Handles made once, on an operation's first use (only operations run
// show): a frame then costs an atomic add and a histogram sample.
static SERIES: [OnceLock<(Counter, Histogram)>; 8] = [const { OnceLock::new() }; 8];

/// An operation being timed; `None` when metrics are off.
pub(super) type Timed = Option<(usize, Instant)>;

/// Starts timing one operation.
pub(super) fn start(op: Option<&Op>) -> Timed {
    busmq_server::metrics::start_timer().map(|started| (index(op), started))
}

/// Counts the operation [`start`] timed.
pub(super) fn finish(timed: Timed) {
    if let Some((op, started)) = timed {
        let (count, duration) = SERIES[op].get_or_init(|| {
            (
                metrics::counter!("busmq_storage_operations_total", "op" => OPS[op]),
                metrics::histogram!("busmq_storage_operation_duration_seconds", "op" => OPS[op]),
            )
        });
        count.increment(1);
        duration.record(started.elapsed().as_secs_f64());
    }
}
