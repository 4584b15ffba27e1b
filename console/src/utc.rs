//! Calendar dates in UTC from unix seconds, for the names and times the binaries print
//! (backup-ids, the audit ledger, S3 request signing in tests). No clock is read here.

/// A UTC date and time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Civil {
    pub year: u64,
    pub month: u64,
    pub day: u64,
    pub hour: u64,
    pub minute: u64,
    pub second: u64,
}

/// The UTC date and time `secs` seconds after 1970-01-01T00:00:00Z (the proleptic
/// Gregorian calendar, H. Hinnant's `civil_from_days`).
pub fn civil(secs: u64) -> Civil {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    Civil {
        year: yoe + era * 400 + u64::from(month <= 2),
        month,
        day: doy - (153 * mp + 2) / 5 + 1,
        hour: rem / 3600,
        minute: rem % 3600 / 60,
        second: rem % 60,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        let c = |s| {
            let c = civil(s);
            (c.year, c.month, c.day, c.hour, c.minute, c.second)
        };
        assert_eq!(c(0), (1970, 1, 1, 0, 0, 0));
        assert_eq!(c(951_782_400), (2000, 2, 29, 0, 0, 0));
        assert_eq!(c(1_796_334_431), (2026, 12, 3, 21, 47, 11));
        assert_eq!(c(4_107_542_399), (2100, 2, 28, 23, 59, 59));
    }
}
