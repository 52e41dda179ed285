//! [`R2Error`]: what a bucket operation fails with. Texts and numeric codes follow R2's
//! documented error codes (developers.cloudflare.com/r2/api/error-codes) and the messages the
//! Workers binding shows; the JS binding formats them as `"<op>: <message> (<code>)"`.

use std::fmt;

/// A boxed error from a body stream supplied by the caller.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The hash algorithms a put may be checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChecksumAlgorithm {
    Md5,
    Sha1,
    Sha256,
    Sha384,
    Sha512,
}

impl ChecksumAlgorithm {
    /// The name R2 uses in messages (`"MD5"`, `"SHA-256"`...).
    pub fn name(self) -> &'static str {
        match self {
            Self::Md5 => "MD5",
            Self::Sha1 => "SHA-1",
            Self::Sha256 => "SHA-256",
            Self::Sha384 => "SHA-384",
            Self::Sha512 => "SHA-512",
        }
    }

    /// Digest length in bytes.
    pub fn len(self) -> usize {
        match self {
            Self::Md5 => 16,
            Self::Sha1 => 20,
            Self::Sha256 => 32,
            Self::Sha384 => 48,
            Self::Sha512 => 64,
        }
    }

    /// Always false; digests are never empty (clippy's `len_without_is_empty`).
    pub fn is_empty(self) -> bool {
        false
    }

    /// All algorithms, in R2's order (`checksums` fields).
    pub const ALL: [ChecksumAlgorithm; 5] = [
        Self::Md5,
        Self::Sha1,
        Self::Sha256,
        Self::Sha384,
        Self::Sha512,
    ];
}

/// Why a bucket operation failed.
#[derive(Debug, thiserror::Error)]
pub enum R2Error {
    /// 10007: the object does not exist (operations that need one: copy source, S3 GET).
    #[error("The specified key does not exist.")]
    NoSuchKey,
    /// 10006.
    #[error("The specified bucket does not exist.")]
    NoSuchBucket,
    /// 10005: bucket names are 3–63 characters of `a-z`, `0-9` and `-`, starting and ending
    /// with a letter or digit.
    #[error("The specified bucket name is not valid.")]
    InvalidBucketName,
    /// 10073: `create_bucket` of a name that exists.
    #[error("The bucket you tried to create already exists, and you own it.")]
    BucketAlreadyExists,
    /// 10008.
    #[error("The bucket you tried to delete is not empty.")]
    BucketNotEmpty,
    /// 10020: empty key, or longer than 1,024 bytes.
    #[error("The specified object name is not valid.")]
    InvalidObjectName,
    /// 100100: more than 5 GiB − 5 MiB in one put or part.
    #[error("Your proposed upload exceeds the maximum allowed object size.")]
    EntityTooLarge,
    /// 10011: a multipart part other than the last is smaller than 5 MiB.
    #[error("Your proposed upload is smaller than the minimum allowed object size.")]
    EntityTooSmall,
    /// 10012: custom metadata over 8,192 bytes.
    #[error("Your metadata headers exceed the maximum allowed metadata size.")]
    MetadataTooLarge,
    /// 10022: `list` limit outside 1..=1000.
    #[error("MaxKeys params must be positive integer <= 1000.")]
    InvalidMaxKeys,
    /// 10024.
    #[error("The specified multipart upload does not exist.")]
    NoSuchUpload,
    /// 10025: a part named in `complete` is missing or its etag differs.
    #[error("One or more of the specified parts could not be found.")]
    InvalidPart,
    /// 10029 with a specific reason.
    #[error("{0}")]
    InvalidArgument(String),
    /// 10031 (a get reports this as `GetResult::PreconditionFailed` instead).
    #[error("At least one of the pre-conditions you specified did not hold.")]
    PreconditionFailed,
    /// 10037: the body does not hash to the checksum given.
    #[error(
        "The {} checksum you specified did not match what we received.\nYou provided a {} checksum with value: {}\nActual {} was: {}",
        .algorithm.name(), .algorithm.name(), .provided, .algorithm.name(), .actual
    )]
    BadDigest {
        algorithm: ChecksumAlgorithm,
        provided: String,
        actual: String,
    },
    /// 10039; carries the object size (S3 answers `Content-Range: bytes */size`).
    #[error("The requested range is not satisfiable")]
    InvalidRange { size: u64 },
    /// 10048: parts of a multipart upload are not uniform (all but the last the same size,
    /// the last no larger).
    #[error("There was a problem with the multipart upload.")]
    BadUpload,
    /// The body ended before the announced length, or went past it.
    #[error(
        "You did not provide the number of bytes specified by the Content-Length HTTP header."
    )]
    IncompleteBody,
    /// The body stream supplied by the caller failed; nothing was stored.
    #[error("reading the request body failed: {0}")]
    Body(BoxError),
    /// The bucket's object is overloaded (too many queued operations).
    #[error("Reduce your request rate.")]
    Overloaded,
    /// 10001: storage or I/O failure. The detail is for logs.
    #[error("We encountered an internal error. Please try again.")]
    Internal(String),
}

impl R2Error {
    /// R2's numeric error code (the `(100xx)` suffix of binding messages).
    pub fn code(&self) -> u32 {
        match self {
            Self::NoSuchKey => 10007,
            Self::NoSuchBucket => 10006,
            Self::InvalidBucketName => 10005,
            Self::BucketAlreadyExists => 10073,
            Self::BucketNotEmpty => 10008,
            Self::InvalidObjectName => 10020,
            Self::EntityTooLarge => 100100,
            Self::EntityTooSmall => 10011,
            Self::MetadataTooLarge => 10012,
            Self::InvalidMaxKeys => 10022,
            Self::NoSuchUpload => 10024,
            Self::InvalidPart => 10025,
            Self::InvalidArgument(_) => 10029,
            Self::PreconditionFailed => 10031,
            Self::BadDigest { .. } => 10037,
            Self::InvalidRange { .. } => 10039,
            Self::BadUpload => 10048,
            Self::IncompleteBody => 10029,
            Self::Body(_) => 10029,
            Self::Overloaded => 10058,
            Self::Internal(_) => 10001,
        }
    }

    /// The message a Workers binding throws: `"<op>: <message> (<code>)"`, e.g.
    /// `"put: Your metadata headers exceed the maximum allowed metadata size. (10012)"`.
    pub fn binding_message(&self, op: &str) -> String {
        format!("{op}: {self} ({})", self.code())
    }

    pub(crate) fn internal(e: impl fmt::Display) -> R2Error {
        R2Error::Internal(e.to_string())
    }
}

impl From<std::io::Error> for R2Error {
    fn from(e: std::io::Error) -> Self {
        R2Error::Internal(format!("blob I/O: {e}"))
    }
}

impl From<cinder_storage::StorageError> for R2Error {
    fn from(e: cinder_storage::StorageError) -> Self {
        R2Error::Internal(format!("metadata storage: {e}"))
    }
}
