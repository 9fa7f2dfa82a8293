//! SOA serials: RFC 1982 arithmetic and the policies that choose the served serial when a
//! zone's content changes.
//!
//! Pure functions over numbers and time: the reload pipeline (`control`) feeds them the
//! running and the newly loaded zone; transfers compare serials with `serial_gt`.

use std::time::SystemTime;

use serde::Deserialize;

/// How a reload raises the SOA serial of changed content (after Knot's `serial-policy`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SerialPolicy {
    /// Serve the file's serial as written.
    Keep,
    /// Previous served serial + 1.
    #[default]
    Increment,
    /// Seconds since the Unix epoch (or previous + 1 if that is not greater).
    Unixtime,
    /// YYYYMMDDnn (or previous + 1 if that is not greater).
    Dateserial,
}

/// RFC 1982 §3.2: `a` is greater than `b` in serial number arithmetic.
pub fn serial_gt(a: u32, b: u32) -> bool {
    a != b && a.wrapping_sub(b) < 0x8000_0000
}

/// The serial to serve for a zone.
///
/// `previous` is (served serial, content digest) of the running zone, if any. The served serial
/// never goes backwards: a file serial that is not greater than the served one is replaced
/// when the content changed (per `policy`) and kept when it did not.
pub fn choose_serial(
    policy: SerialPolicy,
    previous: Option<(u32, u64)>,
    file_serial: u32,
    digest: u64,
    now: SystemTime,
) -> u32 {
    let Some((served, old_digest)) = previous else {
        return file_serial;
    };
    if serial_gt(file_serial, served) {
        return file_serial;
    }
    if digest == old_digest {
        return served;
    }
    let next = served.wrapping_add(1);
    let candidate = match policy {
        SerialPolicy::Keep => return served,
        SerialPolicy::Increment => next,
        SerialPolicy::Unixtime => now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(next, |d| d.as_secs() as u32),
        SerialPolicy::Dateserial => date_serial(now),
    };
    if serial_gt(candidate, served) {
        candidate
    } else {
        next
    }
}

/// YYYYMMDD00 for the UTC date of `now`.
fn date_serial(now: SystemTime) -> u32 {
    let days = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400) as i64;
    let (year, month, day) = crate::duration::civil_from_days(days);
    (year * 1_000_000 + month * 10_000 + day * 100) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn serial_arithmetic_wraps() {
        assert!(serial_gt(2, 1));
        assert!(serial_gt(0, u32::MAX));
        assert!(!serial_gt(1, 2));
        assert!(!serial_gt(5, 5));
    }

    #[test]
    fn serial_never_goes_backwards() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        // First load: the file's serial.
        assert_eq!(choose_serial(SerialPolicy::Increment, None, 7, 1, now), 7);
        // The operator raised it.
        assert_eq!(choose_serial(SerialPolicy::Increment, Some((7, 1)), 8, 2, now), 8);
        // Content changed, serial not raised.
        assert_eq!(choose_serial(SerialPolicy::Increment, Some((7, 1)), 7, 2, now), 8);
        assert_eq!(choose_serial(SerialPolicy::Keep, Some((7, 1)), 7, 2, now), 7);
        assert_eq!(
            choose_serial(SerialPolicy::Unixtime, Some((7, 1)), 7, 2, now),
            1_795_000_000
        );
        assert_eq!(
            choose_serial(SerialPolicy::Dateserial, Some((7, 1)), 7, 2, now),
            2_026_111_800
        );
        // A date serial below the served one still moves forward by one.
        assert_eq!(
            choose_serial(SerialPolicy::Dateserial, Some((2_030_010_100, 1)), 5, 2, now),
            2_030_010_101
        );
        // Unchanged content keeps the served serial even if the file's went down.
        assert_eq!(choose_serial(SerialPolicy::Increment, Some((9, 1)), 3, 1, now), 9);
        // Wrap-around.
        assert_eq!(
            choose_serial(SerialPolicy::Increment, Some((u32::MAX, 1)), u32::MAX, 2, now),
            0
        );
    }
}
