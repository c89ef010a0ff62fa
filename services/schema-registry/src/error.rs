//! The registry's one error type, with Confluent's error codes.

use axum::http::StatusCode;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("Subject '{0}' not found.")]
    SubjectNotFound(String),
    #[error("Version {version} not found for subject '{subject}'.")]
    VersionNotFound { subject: String, version: String },
    #[error("Schema {0} not found.")]
    SchemaNotFound(String),
    #[error("Invalid schema: {0}")]
    InvalidSchema(String),
    #[error(
        "The specified version '{0}' is not a valid version id. Allowed values are between [1, 2^31-1] and the string \"latest\""
    )]
    InvalidVersion(String),
    #[error(
        "Invalid compatibility level '{0}'. Valid values are NONE, BACKWARD, BACKWARD_TRANSITIVE, FORWARD, FORWARD_TRANSITIVE, FULL and FULL_TRANSITIVE"
    )]
    InvalidCompatibility(String),
    #[error(
        "Schema being registered is incompatible with an earlier schema for subject '{subject}' ({level}): {}",
        .messages.join("; ")
    )]
    Incompatible {
        subject: String,
        level: &'static str,
        messages: Vec<String>,
    },
    #[error("Unauthorized: {0}")]
    Unauthorized(&'static str),
    #[error("Malformed request: {0}")]
    BadRequest(String),
    #[error("{0} is not supported by this registry")]
    Unsupported(&'static str),
    #[error("Error in the backend data store: {0}")]
    Storage(#[from] sea_orm::DbErr),
    #[error("I/O: {0}")]
    Io(#[source] std::io::Error),
    #[error("schema registry at {url}: {reason}")]
    Remote { url: String, reason: String },
    #[error("cannot pre-register {subject}: {source}")]
    Preregistration {
        subject: String,
        #[source]
        source: Box<RegistryError>,
    },
}

impl RegistryError {
    /// Confluent's `error_code`.
    pub fn error_code(&self) -> u32 {
        match self {
            RegistryError::SubjectNotFound(_) => 40401,
            RegistryError::VersionNotFound { .. } => 40402,
            RegistryError::SchemaNotFound(_) => 40403,
            RegistryError::InvalidSchema(_) => 42201,
            RegistryError::InvalidVersion(_) => 42202,
            RegistryError::InvalidCompatibility(_) => 42203,
            RegistryError::Incompatible { .. } => 409,
            RegistryError::BadRequest(_) => 400,
            RegistryError::Unauthorized(_) => 40101,
            RegistryError::Unsupported(_) => 42206,
            RegistryError::Storage(_) => 50001,
            RegistryError::Io(_) | RegistryError::Remote { .. } => 50003,
            RegistryError::Preregistration { source, .. } => source.error_code(),
        }
    }

    /// The HTTP status of the error response.
    pub fn status(&self) -> StatusCode {
        match self.error_code() {
            409 => StatusCode::CONFLICT,
            400 => StatusCode::BAD_REQUEST,
            40101 => StatusCode::UNAUTHORIZED,
            code if code / 100 == 404 => StatusCode::NOT_FOUND,
            code if code / 100 == 422 => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A short stable label, for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            RegistryError::SubjectNotFound(_) => "subject_not_found",
            RegistryError::VersionNotFound { .. } => "version_not_found",
            RegistryError::SchemaNotFound(_) => "schema_not_found",
            RegistryError::InvalidSchema(_) => "invalid_schema",
            RegistryError::InvalidVersion(_) => "invalid_version",
            RegistryError::InvalidCompatibility(_) => "invalid_compatibility",
            RegistryError::Incompatible { .. } => "incompatible",
            RegistryError::BadRequest(_) => "bad_request",
            RegistryError::Unauthorized(_) => "unauthorized",
            RegistryError::Unsupported(_) => "unsupported",
            RegistryError::Storage(_) => "storage",
            RegistryError::Io(_) => "io",
            RegistryError::Remote { .. } => "remote",
            RegistryError::Preregistration { .. } => "preregistration",
        }
    }
}
