//! Counts-or-percentages, resolved against a fleet's size.
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// How a percentage is rounded to a number of devices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Round {
    /// Down (at least 1): `maxUnavailable`, as Deployments do, so a percentage never lets more
    /// devices go at once than it says.
    Down,
    /// Up: step sizes and failure thresholds, so "10%" of 5 devices still means one device.
    Up,
}

/// The number of devices `value` stands for in a fleet of `total`: a count as it is (capped at
/// nothing; callers compare it with the fleet), a percentage of `total` rounded as asked, and
/// never less than 1. The API's CEL rules refuse anything else; a malformed value that slips
/// through (an old object, a client that skipped validation) counts as 1, the safest size.
pub fn resolve(value: &IntOrString, total: usize, round: Round) -> usize {
    let n = match value {
        IntOrString::Int(n) => usize::try_from(*n).unwrap_or(1),
        IntOrString::String(s) => {
            let percent = s
                .strip_suffix('%')
                .and_then(|p| p.parse::<usize>().ok())
                .filter(|p| (1..=100).contains(p));
            match percent {
                Some(p) => match round {
                    Round::Down => total * p / 100,
                    Round::Up => (total * p).div_ceil(100),
                },
                None => 1,
            }
        }
    };
    n.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> IntOrString {
        IntOrString::String(v.to_string())
    }

    #[test]
    fn counts_are_taken_as_they_are() {
        assert_eq!(resolve(&IntOrString::Int(3), 10, Round::Down), 3);
        assert_eq!(resolve(&IntOrString::Int(30), 10, Round::Up), 30);
    }

    #[test]
    fn percentages_round_as_asked_and_never_below_one() {
        assert_eq!(resolve(&s("25%"), 10, Round::Down), 2);
        assert_eq!(resolve(&s("25%"), 10, Round::Up), 3);
        assert_eq!(resolve(&s("10%"), 5, Round::Down), 1);
        assert_eq!(resolve(&s("10%"), 5, Round::Up), 1);
        assert_eq!(resolve(&s("100%"), 7, Round::Down), 7);
        assert_eq!(resolve(&s("1%"), 0, Round::Up), 1);
    }

    #[test]
    fn malformed_values_count_as_one() {
        for bad in ["", "%", "0%", "101%", "ten", "5"] {
            assert_eq!(resolve(&s(bad), 100, Round::Down), 1, "{bad:?}");
        }
        assert_eq!(resolve(&IntOrString::Int(-4), 100, Round::Down), 1);
        assert_eq!(resolve(&IntOrString::Int(0), 100, Round::Down), 1);
    }
}
