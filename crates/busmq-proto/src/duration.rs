//! `google.protobuf.Duration`, the one way every busmq contract spells a
//! length of time, to and from [`std::time::Duration`].

use std::time::Duration;

use busmq_core::Error;

/// The wire form of `d`.
pub fn to_proto(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        // A busmq duration is bounded by MAX_TTL, far below i64 seconds.
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: d.subsec_nanos() as i32,
    }
}

/// The wire form of `d` rounded up to whole seconds, for a field counted
/// in seconds (a ttl): a client's 1.5 s ttl lives 2 s, never 1.
pub fn seconds_rounded_up(d: Duration) -> prost_types::Duration {
    let seconds = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    to_proto(Duration::from_secs(seconds))
}

/// The wire form of `d` rounded up to whole milliseconds, for a field with
/// millisecond precision (a visibility timeout).
pub fn millis_rounded_up(d: Duration) -> prost_types::Duration {
    let whole = Duration::from_millis(d.as_millis().try_into().unwrap_or(u64::MAX));
    let up = if whole < d {
        whole + Duration::from_millis(1)
    } else {
        whole
    };
    to_proto(up)
}

/// The length of time `field` holds, refused as INVALID_ARGUMENT when it is
/// negative or not normalised (nanos outside 0..1e9), which a correct
/// client never sends.
pub fn from_proto(field: &str, d: &prost_types::Duration) -> Result<Duration, Error> {
    let invalid = |why: &str| Error::InvalidArgument(format!("{field} {why}"));
    if d.seconds < 0 || d.nanos < 0 {
        return Err(invalid("must not be negative"));
    }
    if d.nanos >= 1_000_000_000 {
        return Err(invalid("has nanos over 999,999,999"));
    }
    Ok(Duration::new(d.seconds as u64, d.nanos as u32))
}

/// Like [`from_proto`], for a field whose duration is counted in whole
/// seconds (a ttl): a fraction is refused rather than silently dropped.
pub fn whole_seconds(field: &str, d: &prost_types::Duration) -> Result<u64, Error> {
    let d = from_proto(field, d)?;
    if d.subsec_nanos() != 0 {
        return Err(Error::InvalidArgument(format!(
            "{field} must be whole seconds"
        )));
    }
    Ok(d.as_secs())
}

/// Like [`from_proto`], for a field with millisecond precision (a
/// visibility timeout): a fraction of a millisecond is refused.
pub fn whole_millis(field: &str, d: &prost_types::Duration) -> Result<u64, Error> {
    let d = from_proto(field, d)?;
    if d.subsec_nanos() % 1_000_000 != 0 {
        return Err(Error::InvalidArgument(format!(
            "{field} must be whole milliseconds"
        )));
    }
    Ok(d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_what_no_client_should_send() {
        let d = Duration::from_millis(1500);
        assert_eq!(from_proto("x", &to_proto(d)).unwrap(), d);
        assert_eq!(whole_millis("x", &to_proto(d)).unwrap(), 1500);
        assert!(whole_seconds("ttl", &to_proto(d)).is_err());
        assert_eq!(
            whole_seconds("ttl", &to_proto(Duration::from_secs(30))).unwrap(),
            30
        );
        let negative = prost_types::Duration {
            seconds: -1,
            nanos: 0,
        };
        let err = from_proto("ttl", &negative).unwrap_err();
        assert_eq!(err.reason(), Some(busmq_core::Reason::InvalidArgument));
        assert!(err.to_string().contains("ttl"), "{err}");
        let unnormalised = prost_types::Duration {
            seconds: 1,
            nanos: 1_000_000_000,
        };
        assert!(from_proto("ttl", &unnormalised).is_err());
        let sub_ms = prost_types::Duration {
            seconds: 0,
            nanos: 1,
        };
        assert!(whole_millis("visibility_timeout", &sub_ms).is_err());
        let up = seconds_rounded_up(Duration::from_millis(1001));
        assert_eq!(whole_seconds("ttl", &up).unwrap(), 2);
        let up = millis_rounded_up(Duration::from_micros(1001));
        assert_eq!(whole_millis("visibility_timeout", &up).unwrap(), 2);
        let exact = millis_rounded_up(Duration::from_millis(7));
        assert_eq!(whole_millis("visibility_timeout", &exact).unwrap(), 7);
    }
}
