//! Files that are ours alone (fail closed): the data directory and
//! everything in it is readable by the user `convo` runs as and nobody else,
//! and a secret is read only from a file nobody else may read.
//!
//! - [`restrict_umask`] makes every file and directory this process (and the
//!   nats-server it starts) creates 0600/0700, whatever the umask it was
//!   started with: sled, the JetStream store, snapshots, logs and pid files
//!   included.
//! - [`prepare_data_dir`] creates the data directory 0700, or tightens an
//!   existing one (and everything under it) that a looser umask or an older
//!   version left readable by others, saying so.
//! - [`read_secret`] reads a key file only if it is private, readable and
//!   long enough; otherwise the error names the file and the fix, and the
//!   server does not start.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The mode of every file convo writes.
pub const FILE_MODE: u32 = 0o600;
/// The mode of every directory convo makes.
pub const DIR_MODE: u32 = 0o700;
/// The bits no file or directory of ours may have: any access by group or others.
pub const OTHERS_BITS: u32 = 0o077;

/// Why a private file or directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PrivateError {
    #[error("cannot read {path}: {source} (check the path, and that the user convo runs as may read it)")]
    Unreadable { path: PathBuf, source: std::io::Error },
    #[error(
        "{path} holds {what} and is readable by group or others (mode {mode:o}); anyone on this machine may have \
         read it: run `chmod 600 {path}` (and make a new one if it may have leaked)"
    )]
    Exposed { path: PathBuf, what: String, mode: u32 },
    #[error(
        "{path} holds {what} of {len} bytes; at least {min} are needed (for example \
         `head -c 48 /dev/urandom | base64 > {path} && chmod 600 {path}`)"
    )]
    TooShort { path: PathBuf, what: String, len: usize, min: usize },
    #[error("{path} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("cannot make {path} private: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// From now on, files and directories this process creates (and those of
/// the processes it starts) are its user's alone, whatever the umask it
/// was given.
pub fn restrict_umask() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(OTHERS_BITS));
}

/// Whether `path` may be read (or written) by group or others.
fn exposed_mode(meta: &std::fs::Metadata) -> Option<u32> {
    let mode = meta.mode() & 0o7777;
    (mode & OTHERS_BITS != 0).then_some(mode)
}

/// Refuses a secret file readable by group or others.
pub fn check_private(path: &Path, what: &str) -> Result<(), PrivateError> {
    let meta =
        std::fs::metadata(path).map_err(|source| PrivateError::Unreadable { path: path.to_path_buf(), source })?;
    match exposed_mode(&meta) {
        Some(mode) => Err(PrivateError::Exposed { path: path.to_path_buf(), what: what.to_owned(), mode }),
        None => Ok(()),
    }
}

/// The bytes of a secret (`what`, for the messages) in `path`, less a
/// trailing line break: refused when the file is readable by others, cannot
/// be read, or holds fewer than `min_bytes`.
pub fn read_secret(path: &Path, what: &str, min_bytes: usize) -> Result<Vec<u8>, PrivateError> {
    check_private(path, what)?;
    let mut bytes =
        std::fs::read(path).map_err(|source| PrivateError::Unreadable { path: path.to_path_buf(), source })?;
    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        bytes.pop();
    }
    if bytes.len() < min_bytes {
        return Err(PrivateError::TooShort {
            path: path.to_path_buf(),
            what: what.to_owned(),
            len: bytes.len(),
            min: min_bytes,
        });
    }
    Ok(bytes)
}

/// Creates `dir` (mode 0700) if it is not there; otherwise makes it and
/// everything under it private: each entry that group or others could
/// reach loses those bits. Returns what was tightened (for the log).
pub fn prepare_data_dir(dir: &Path) -> Result<Vec<PathBuf>, PrivateError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PrivateError::Io { path, source }
    };
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir).map_err(io(dir))?;
            // `recursive` applies the umask: the last one is set as asked.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE)).map_err(io(dir))?;
            Ok(Vec::new())
        }
        Err(e) => Err(io(dir)(e)),
        Ok(meta) if !meta.is_dir() && !std::fs::metadata(dir).is_ok_and(|m| m.is_dir()) => {
            Err(PrivateError::NotADirectory { path: dir.to_path_buf() })
        }
        Ok(_) => {
            let mut tightened = Vec::new();
            tighten(dir, &mut tightened)?;
            Ok(tightened)
        }
    }
}

/// Takes group and others' bits off `path` and, for a directory, off
/// everything under it (symbolic links are not followed).
fn tighten(path: &Path, tightened: &mut Vec<PathBuf>) -> Result<(), PrivateError> {
    let io = |source| PrivateError::Io { path: path.to_path_buf(), source };
    let meta = std::fs::symlink_metadata(path).map_err(io)?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    if let Some(mode) = exposed_mode(&meta) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & !OTHERS_BITS)).map_err(io)?;
        tightened.push(path.to_path_buf());
    }
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).map_err(io)? {
            tighten(&entry.map_err(io)?.path(), tightened)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_read_only_from_private_long_enough_files() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("jwt.key");
        std::fs::write(&key, b"0123456789abcdef0123456789abcdef\n").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(read_secret(&key, "the JWT key", 32), Err(PrivateError::Exposed { mode: 0o644, .. })));
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_secret(&key, "the JWT key", 32).unwrap().len(), 32, "the line break is not the key");
        assert!(matches!(read_secret(&key, "the JWT key", 33), Err(PrivateError::TooShort { len: 32, .. })));
        let missing = dir.path().join("none.key");
        assert!(matches!(read_secret(&missing, "the JWT key", 32), Err(PrivateError::Unreadable { .. })));
    }

    #[test]
    fn a_data_directory_is_made_private_or_tightened() {
        let root = tempfile::tempdir().unwrap();
        let fresh = root.path().join("a/b");
        assert!(prepare_data_dir(&fresh).unwrap().is_empty());
        assert_eq!(std::fs::metadata(&fresh).unwrap().mode() & 0o777, DIR_MODE);
        let old = root.path().join("old");
        std::fs::create_dir_all(old.join("projections")).unwrap();
        std::fs::write(old.join("projections/db"), b"text").unwrap();
        for (path, mode) in
            [(old.clone(), 0o755), (old.join("projections"), 0o755), (old.join("projections/db"), 0o644)]
        {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        assert_eq!(prepare_data_dir(&old).unwrap().len(), 3);
        assert_eq!(std::fs::metadata(old.join("projections/db")).unwrap().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(&old).unwrap().mode() & 0o777, 0o700);
        assert!(prepare_data_dir(&old).unwrap().is_empty(), "nothing left to tighten");
    }
}
