//! Who is on the other end of a connection, and what they may do.

use super::*;
use crate::state::valid_name;

/// Who is on the other end of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Manager,
    /// A process in one of our containers (the name, if it is a current one).
    Container(Option<String>),
    Other,
}

/// Pure: decide from what `/proc` says. `cgroup` is `/proc/<pid>/cgroup`.
pub fn classify(
    uid: u32,
    gids: &[u32],
    cgroup: &str,
    prefix: &str,
    manager_gid: Option<u32>,
) -> Caller {
    let marker = "/edgevisor/";
    for line in cgroup.lines() {
        let path = line.splitn(3, ':').nth(2).unwrap_or_default();
        if let Some(pos) = path.find(marker) {
            let id = path[pos + marker.len()..]
                .split('/')
                .next()
                .unwrap_or_default();
            let name = id
                .strip_prefix(prefix)
                .and_then(|r| r.strip_prefix('-'))
                .filter(|n| valid_name(n))
                .map(str::to_owned);
            return Caller::Container(name);
        }
    }
    if uid == 0 || manager_gid.is_some_and(|g| gids.contains(&g)) {
        Caller::Manager
    } else {
        Caller::Other
    }
}

pub(super) fn identify(cred: Option<tokio::net::unix::UCred>, d: &Daemon) -> Caller {
    let Some(cred) = cred else {
        return Caller::Other;
    };
    let (cgroup, mut gids) = match cred.pid() {
        Some(pid) => {
            let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let gids: Vec<u32> = status
                .lines()
                .find_map(|l| l.strip_prefix("Groups:"))
                .map(|g| {
                    g.split_whitespace()
                        .filter_map(|x| x.parse().ok())
                        .collect()
                })
                .unwrap_or_default();
            (cg, gids)
        }
        None => (String::new(), Vec::new()),
    };
    gids.push(cred.gid());
    classify(cred.uid(), &gids, &cgroup, &d.prefix, d.cfg.manager_gid)
}

pub(super) fn authorize(caller: &Caller, method: &Method, route: &str) -> Result<(), ApiError> {
    match caller {
        Caller::Manager => Ok(()),
        Caller::Container(_) if method == Method::GET || route == "/signal" => Ok(()),
        Caller::Container(_) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "containers may only read and signal",
        )),
        Caller::Other => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "caller is neither a manager nor one of our containers",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callers_are_classified_by_cgroup_then_credentials() {
        let cg = "12:memory:/edgevisor/evabc-web\n0::/\n";
        assert_eq!(
            classify(0, &[0], cg, "evabc", None),
            Caller::Container(Some("web".into()))
        );
        assert_eq!(
            classify(0, &[0], cg, "evzzz", None),
            Caller::Container(None)
        );
        assert_eq!(
            classify(0, &[], "0::/user.slice\n", "evabc", None),
            Caller::Manager
        );
        assert_eq!(
            classify(1000, &[50], "", "evabc", Some(50)),
            Caller::Manager
        );
        assert_eq!(classify(1000, &[51], "", "evabc", Some(50)), Caller::Other);
    }

    #[test]
    fn containers_may_read_and_signal_only() {
        let c = Caller::Container(Some("web".into()));
        assert!(authorize(&c, &Method::GET, "/steps").is_ok());
        assert!(authorize(&c, &Method::POST, "/signal").is_ok());
        assert!(authorize(&c, &Method::PUT, "/steps/{rev}").is_err());
        assert!(authorize(&c, &Method::POST, "/commands").is_err());
        assert!(authorize(&Caller::Other, &Method::GET, "/steps").is_err());
    }
}
