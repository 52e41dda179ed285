//! [`CacheError`]: the Cache API's errors, with workerd's texts.

/// Which JavaScript error class a [`CacheError`] becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// `TypeError`: `put()` refused its arguments.
    TypeError,
    /// A plain `Error`.
    Error,
}

/// An error of a Cache API call.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// `put()` with a request whose method is not GET.
    #[error("Cannot cache response to non-GET request.")]
    NonGet,
    /// `put()` of a 206.
    #[error("Cannot cache response to a range request (206 Partial Content).")]
    Partial,
    /// `put()` of a response with `Vary: *`.
    #[error("Cannot cache response with 'Vary: *' header.")]
    VaryStar,
    /// Reading the response body to store it failed.
    #[error("reading the response body: {0}")]
    Body(String),
    /// The cache directory failed us.
    #[error("cache storage: {0}")]
    Io(#[from] std::io::Error),
    /// A stored entry could not be decoded.
    #[error("corrupt cache entry: {0}")]
    Corrupt(String),
}

impl CacheError {
    /// The JavaScript error class to throw.
    pub fn kind(&self) -> ErrorKind {
        match self {
            CacheError::NonGet | CacheError::Partial | CacheError::VaryStar => ErrorKind::TypeError,
            _ => ErrorKind::Error,
        }
    }
}
