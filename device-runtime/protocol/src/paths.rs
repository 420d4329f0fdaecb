//! Pure path rules for everything that comes from outside (layer entries, link
//! targets, file paths in a state). No filesystem access here: the unpacker combines
//! these lexical checks with `lstat` of what is already on disk.

use std::path::{Component, Path, PathBuf};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PathError {
    #[error("path {0:?} escapes the root")]
    Escapes(String),
    #[error("path {0:?} is empty or not valid")]
    Invalid(String),
}

/// A relative path with no `..`, no empty name and no NUL; leading `/` and `./` are
/// dropped (tar writers emit both). Returns the normalised relative path.
pub fn clean_relative(p: &str) -> Result<PathBuf, PathError> {
    if p.contains('\0') {
        return Err(PathError::Invalid(p.into()));
    }
    let mut out = PathBuf::new();
    for c in Path::new(p).components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            Component::ParentDir => return Err(PathError::Escapes(p.into())),
            Component::Prefix(_) => return Err(PathError::Invalid(p.into())),
        }
    }
    if out.as_os_str().is_empty() {
        return Err(PathError::Invalid(p.into()));
    }
    Ok(out)
}

/// Where a symlink at `link` (relative to the root) pointing to `target` ends up,
/// resolved lexically inside the root; `..` above the root is an escape. Absolute
/// targets are interpreted from the container's root, as the container will see them.
pub fn resolve_link(link: &Path, target: &str) -> Result<PathBuf, PathError> {
    if target.is_empty() || target.contains('\0') {
        return Err(PathError::Invalid(target.into()));
    }
    let mut stack: Vec<std::ffi::OsString> = Vec::new();
    if !target.starts_with('/')
        && let Some(parent) = link.parent()
    {
        for c in parent.components() {
            if let Component::Normal(n) = c {
                stack.push(n.to_owned());
            }
        }
    }
    for c in Path::new(target).components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => stack.push(n.to_owned()),
            Component::ParentDir => {
                if stack.pop().is_none() {
                    return Err(PathError::Escapes(target.into()));
                }
            }
            Component::Prefix(_) => return Err(PathError::Invalid(target.into())),
        }
    }
    Ok(stack.iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_are_normalised() {
        assert_eq!(clean_relative("./bin/sh").unwrap(), PathBuf::from("bin/sh"));
        assert_eq!(
            clean_relative("/etc/passwd").unwrap(),
            PathBuf::from("etc/passwd")
        );
        assert_eq!(clean_relative("a//b/").unwrap(), PathBuf::from("a/b"));
    }

    #[test]
    fn dot_dot_and_empty_are_refused() {
        assert!(matches!(clean_relative("../x"), Err(PathError::Escapes(_))));
        assert!(matches!(
            clean_relative("a/../../x"),
            Err(PathError::Escapes(_))
        ));
        assert!(matches!(clean_relative("a/.."), Err(PathError::Escapes(_))));
        assert!(clean_relative("").is_err());
        assert!(clean_relative("./").is_err());
        assert!(clean_relative("a\0b").is_err());
    }

    #[test]
    fn links_resolve_inside_root() {
        let l = Path::new("bin/sh");
        assert_eq!(
            resolve_link(l, "busybox").unwrap(),
            PathBuf::from("bin/busybox")
        );
        assert_eq!(
            resolve_link(l, "/bin/busybox").unwrap(),
            PathBuf::from("bin/busybox")
        );
        assert_eq!(
            resolve_link(l, "../usr/bin/x").unwrap(),
            PathBuf::from("usr/bin/x")
        );
        assert!(resolve_link(l, "../../etc/shadow").is_err());
        assert!(resolve_link(l, "/../etc").is_err());
        assert!(resolve_link(l, "").is_err());
    }
}
