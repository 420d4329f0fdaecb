//! Who is on the other end of a connection, and what they may do.

use super::*;

/// Who is on the other end of a connection. The socket a connection came in on says
/// which kind it is (see [`crate::sockets`]); nothing is read from `/proc` to decide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Manager,
    /// A process in our container of this name, on that container's own socket.
    Container(String),
    Other,
}

/// Pure: a caller of the management socket, from its kernel-checked credentials. `gids`
/// are its primary and supplementary groups (the supplementary ones may be missing if
/// the process is gone: that can only refuse, never grant).
pub fn classify(uid: u32, gids: &[u32], manager_gid: Option<u32>) -> Caller {
    if uid == 0 || manager_gid.is_some_and(|g| gids.contains(&g)) {
        Caller::Manager
    } else {
        Caller::Other
    }
}

/// A caller of the management socket. Without credentials it is nobody.
pub(super) fn identify(cred: Option<tokio::net::unix::UCred>, manager_gid: Option<u32>) -> Caller {
    let Some(cred) = cred else {
        return Caller::Other;
    };
    let mut gids = vec![cred.gid()];
    if cred.uid() != 0
        && manager_gid.is_some()
        && let Some(pid) = cred.pid()
    {
        gids.extend(supplementary_groups(pid));
    }
    classify(cred.uid(), &gids, manager_gid)
}

fn supplementary_groups(pid: i32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| {
            g.split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// What a container may ask of its own socket: its own status and ready signal, the
/// device's metadata and the runtime's version. Never another container's state (env),
/// objects, logs, or any write.
const CONTAINER_ROUTES: &[(&str, &str)] = &[
    ("GET", "/containers"),
    ("POST", "/signal"),
    ("GET", "/device-meta"),
    ("GET", "/device-meta/{key}"),
    ("GET", "/user-meta"),
    ("GET", "/user-meta/{key}"),
    ("GET", "/buildinfo"),
];

pub(super) fn authorize(caller: &Caller, method: &Method, route: &str) -> Result<(), ApiError> {
    match caller {
        Caller::Manager => Ok(()),
        Caller::Container(_)
            if CONTAINER_ROUTES
                .iter()
                .any(|(m, r)| *m == method.as_str() && *r == route) =>
        {
            Ok(())
        }
        Caller::Container(_) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "a container may only read its own status and the device's metadata, and signal ready",
        )),
        Caller::Other => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "only root or the manager group may use the control socket",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn management_callers_are_root_or_the_manager_group() {
        assert_eq!(classify(0, &[0], None), Caller::Manager);
        assert_eq!(classify(1000, &[50], Some(50)), Caller::Manager);
        assert_eq!(classify(1000, &[51], Some(50)), Caller::Other);
        assert_eq!(classify(1000, &[], None), Caller::Other);
    }

    #[test]
    fn containers_may_read_their_own_and_signal_only() {
        let c = Caller::Container("web".into());
        for (m, r) in [
            (Method::GET, "/containers"),
            (Method::POST, "/signal"),
            (Method::GET, "/user-meta/{key}"),
            (Method::GET, "/buildinfo"),
        ] {
            assert!(authorize(&c, &m, r).is_ok(), "{m} {r}");
        }
        for (m, r) in [
            (Method::GET, "/steps"),
            (Method::GET, "/steps/{rev}"),
            (Method::GET, "/objects/{sha256}"),
            (Method::GET, "/containers/{name}/logs"),
            (Method::PUT, "/steps/{rev}"),
            (Method::PUT, "/user-meta/{key}"),
            (Method::POST, "/commands"),
            (Method::PUT, "/containers/{name}"),
        ] {
            let e = authorize(&c, &m, r).expect_err("forbidden");
            assert_eq!(e.status, StatusCode::FORBIDDEN, "{m} {r}");
        }
        assert!(authorize(&Caller::Other, &Method::GET, "/buildinfo").is_err());
        assert!(authorize(&Caller::Manager, &Method::POST, "/commands").is_ok());
    }
}
