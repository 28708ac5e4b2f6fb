//! What callers ask of an operation: new-file owner and mode, attribute changes, open/write modes.

/// Owner and mode of something a call creates, in container ids. `None`
/// means container root (uid/gid 0) and the default mode of the type.
/// They are applied only to what the call creates, never to what exists.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NewAttrs {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub mode: Option<u32>,
}

/// Attribute changes (SFTP setstat); `None` leaves a field alone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SetAttrs {
    pub size: Option<u64>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub mode: Option<u32>,
    /// (atime, mtime) in seconds since the epoch.
    pub times: Option<(i64, i64)>,
}

/// How to open a regular file, as in `open(2)`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenOptions {
    pub read: bool,
    pub write: bool,
    pub append: bool,
    pub create: bool,
    /// With `create`: fail if the file exists.
    pub exclusive: bool,
    pub truncate: bool,
    /// Mode of a created file (default [`DEFAULT_FILE_MODE`](super::DEFAULT_FILE_MODE)).
    pub mode: Option<u32>,
}

/// Overwrite or append, for [`RootfsAccess::write_file`](super::RootfsAccess::write_file).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WriteMode {
    #[default]
    Overwrite,
    Append,
}
