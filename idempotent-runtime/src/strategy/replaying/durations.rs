//! The duration options of the replaying strategies — `lease`, `ttl` and `on_busy = "wait(..)"`
//! — their defaults, and the floors below which the protocol cannot keep its promise.
//!
//! The floors are checked twice, with the same numbers: by `#[idempotent]` at compile time for
//! literal values (a compile error at the literal, stating the minimum and why), and by each
//! strategy's entry point at run time, before any store call, for [`Options`] built in code
//! (for example from configuration): [`Error::InvalidOption`]. The macro crate cannot depend on
//! this crate, so it repeats the numbers; the test suite checks both sides at the floor and
//! just below it (`tests/tests/durations.rs`, `tests/ui/{pass,fail}/duration_floor_*`).
//!
//! The floors apply to the strategies' options, not to direct calls of the store traits.
//!
//! [`Options`]: super::dedup_table::Options

use std::time::Duration;

use crate::Error;
use crate::strategy::OnBusy;

/// The shortest `lease`: 300 ms.
///
/// While the body runs, the claim (lock, consumed token) is renewed every `lease / 3` — one
/// round trip to the store each — and the next renewal starts only after the previous one has
/// returned. Two renewals fit in one lease, so one renewal may fail or stall and the next still
/// lands in time if a round trip plus scheduling stays under `lease / 6`: 50 ms at this floor,
/// tens of times a loopback or LAN round trip, with room for a SQLite busy wait or a garbage
/// collection pause on the server. A shorter lease lets an ordinary round trip outlast the
/// claim: the body runs while another caller takes the key over (a second effect), and
/// completion fails with [`Error::LockLost`].
pub const MIN_LEASE: Duration = Duration::from_millis(300);

/// The shortest `on_busy = "wait(..)"`: 10 ms.
///
/// A waiting duplicate looks at the key again after a 5 ms pause (doubling up to 100 ms) plus
/// a round trip to the store. Below 10 ms it would give up before its second look, which is
/// `on_busy = "reject"` with extra latency.
pub const MIN_WAIT: Duration = Duration::from_millis(10);

/// The default `lease`: 30 s.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// The default `ttl`: 24 h (as Stripe's idempotency keys).
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// Why `lease` has a floor (the [`Error::InvalidOption`] reason).
const LEASE_REASON: &str = "the claim is renewed every lease/3 by one round trip to the store, and a renewal that fails must leave time for the next one before the lease ends";

/// Why `ttl` must be at least the lease.
const TTL_REASON: &str = "the completed record must outlive the claim it replaces, or a retry that waited out the claim finds no record and runs the body again";

/// Why `wait` has a floor.
const WAIT_REASON: &str = "a waiting duplicate looks again only after a 5 ms pause and a round trip to the store, so a shorter wait gives up before its second look";

/// Checks `lease` (at least [`MIN_LEASE`]) and `ttl` (at least the lease).
pub(crate) fn check_lease_and_ttl(lease: Duration, ttl: Duration) -> Result<(), Error> {
    if lease < MIN_LEASE {
        return Err(Error::InvalidOption {
            option: "lease",
            value: lease,
            minimum: MIN_LEASE,
            reason: LEASE_REASON,
        });
    }
    if ttl < lease {
        return Err(Error::InvalidOption {
            option: "ttl",
            value: ttl,
            minimum: lease,
            reason: TTL_REASON,
        });
    }
    Ok(())
}

/// Checks `on_busy = wait(..)` (at least [`MIN_WAIT`]).
pub(crate) fn check_on_busy(on_busy: OnBusy) -> Result<(), Error> {
    match on_busy {
        OnBusy::Wait(wait) if wait < MIN_WAIT => Err(Error::InvalidOption {
            option: "on_busy",
            value: wait,
            minimum: MIN_WAIT,
            reason: WAIT_REASON,
        }),
        OnBusy::Wait(_) | OnBusy::Reject => Ok(()),
    }
}

/// The check every claim-mode strategy makes after acquiring, before the body: when acquiring
/// took `took`, the claim (lock, consumed token) may already have expired — it was written at
/// some instant of that round trip — so the body must not run. An allowance of 1 % of the
/// lease + 2 ms covers clock drift between the store and this process (as Redlock does).
/// `Err(LeaseShorterThanAcquisition)` then; the caller releases its
/// claim by owner.
pub(crate) fn check_acquisition(took: Duration, lease: Duration) -> Result<(), Error> {
    if took + lease / 100 + Duration::from_millis(2) >= lease {
        tracing::warn!(
            ?took,
            ?lease,
            "acquiring took longer than the lease; the body was not run"
        );
        return Err(Error::LeaseShorterThanAcquisition { lease, took });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_floor_and_ttl_at_least_the_lease() {
        assert!(check_lease_and_ttl(MIN_LEASE, MIN_LEASE).is_ok());
        assert!(check_lease_and_ttl(DEFAULT_LEASE, DEFAULT_TTL).is_ok());
        let e = check_lease_and_ttl(MIN_LEASE - Duration::from_millis(1), DEFAULT_TTL);
        assert!(
            matches!(e, Err(Error::InvalidOption { option: "lease", value, minimum, .. })
                if value == Duration::from_millis(299) && minimum == MIN_LEASE),
            "{e:?}"
        );
        let e = check_lease_and_ttl(Duration::from_secs(2), Duration::from_millis(1999));
        assert!(
            matches!(e, Err(Error::InvalidOption { option: "ttl", minimum, .. })
                if minimum == Duration::from_secs(2)),
            "{e:?}"
        );
        let message = check_lease_and_ttl(Duration::from_millis(1), DEFAULT_TTL)
            .unwrap_err()
            .to_string();
        assert_eq!(
            message,
            format!("invalid option `lease` = 1ms: {LEASE_REASON}; use at least 300ms")
        );
    }

    #[test]
    fn wait_floor() {
        assert!(check_on_busy(OnBusy::Reject).is_ok());
        assert!(check_on_busy(OnBusy::Wait(MIN_WAIT)).is_ok());
        let e = check_on_busy(OnBusy::Wait(MIN_WAIT - Duration::from_millis(1)));
        assert!(
            matches!(e, Err(Error::InvalidOption { option: "on_busy", minimum, .. }) if minimum == MIN_WAIT),
            "{e:?}"
        );
    }
}
