//! The one place where failures become HTTP statuses and OCI error bodies.

use axum::body::Body;
use axum::http::{header, HeaderValue, Response, StatusCode};
use berth_oci::ErrorCode;
use berth_registry::RegistryError;

/// Everything a request can fail with: a registry error, or a request the
/// HTTP layer could not make sense of.
#[derive(Debug)]
pub enum ApiError {
    Registry(RegistryError),
    NameInvalid(String),
    DigestInvalid(String),
    /// A header or query parameter that cannot be parsed.
    BadRequest { code: ErrorCode, message: String },
    MethodNotAllowed,
    NotFound,
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        ApiError::Registry(e)
    }
}

/// Status, OCI code and message for an error.
pub fn classify(err: &ApiError) -> (StatusCode, ErrorCode, String) {
    use RegistryError as R;
    let msg = match err {
        ApiError::Registry(e) => e.to_string(),
        ApiError::NameInvalid(n) => format!("invalid repository name {n:?}"),
        ApiError::DigestInvalid(m) => m.clone(),
        ApiError::BadRequest { message, .. } => message.clone(),
        ApiError::MethodNotAllowed => "method not allowed on this endpoint".into(),
        ApiError::NotFound => "no such endpoint".into(),
    };
    let (status, code) = match err {
        ApiError::NameInvalid(_) => (StatusCode::BAD_REQUEST, ErrorCode::NameInvalid),
        ApiError::DigestInvalid(_) => (StatusCode::BAD_REQUEST, ErrorCode::DigestInvalid),
        ApiError::BadRequest { code, .. } => (StatusCode::BAD_REQUEST, *code),
        ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, ErrorCode::Unsupported),
        ApiError::NotFound => (StatusCode::NOT_FOUND, ErrorCode::Unsupported),
        ApiError::Registry(e) => match e {
            R::NameInvalid => (StatusCode::BAD_REQUEST, ErrorCode::NameInvalid),
            R::NameUnknown => (StatusCode::NOT_FOUND, ErrorCode::NameUnknown),
            R::TagInvalid => (StatusCode::BAD_REQUEST, ErrorCode::TagInvalid),
            R::DigestInvalid(_) => (StatusCode::BAD_REQUEST, ErrorCode::DigestInvalid),
            R::BlobUnknown => (StatusCode::NOT_FOUND, ErrorCode::BlobUnknown),
            R::BlobUploadUnknown => (StatusCode::NOT_FOUND, ErrorCode::BlobUploadUnknown),
            R::BlobUploadInvalid(_) => (StatusCode::BAD_REQUEST, ErrorCode::BlobUploadInvalid),
            R::ChunkOutOfOrder { .. } => (StatusCode::RANGE_NOT_SATISFIABLE, ErrorCode::BlobUploadInvalid),
            R::RangeNotSatisfiable { .. } => (StatusCode::RANGE_NOT_SATISFIABLE, ErrorCode::BlobUnknown),
            R::ManifestUnknown => (StatusCode::NOT_FOUND, ErrorCode::ManifestUnknown),
            R::ManifestInvalid(_) => (StatusCode::BAD_REQUEST, ErrorCode::ManifestInvalid),
            R::ManifestBlobUnknown(_) => (StatusCode::BAD_REQUEST, ErrorCode::ManifestBlobUnknown),
            R::ManifestTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::SizeInvalid),
            R::SizeInvalid(_) => (StatusCode::BAD_REQUEST, ErrorCode::SizeInvalid),
            // 405 is what the spec allows a registry that will not delete.
            R::Unsupported(_) | R::InUse(_) => (StatusCode::METHOD_NOT_ALLOWED, ErrorCode::Unsupported),
            R::Denied(_) | R::SignatureRequired(_) => (StatusCode::FORBIDDEN, ErrorCode::Denied),
            R::Storage(_) | R::Metadata(_) => (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Unknown),
        },
    };
    (status, code, msg)
}

/// A structured `detail` for errors that carry one.
fn detail(err: &ApiError) -> serde_json::Value {
    match err {
        ApiError::Registry(RegistryError::ManifestBlobUnknown(d)) => serde_json::json!({ "digest": d.to_string() }),
        ApiError::Registry(RegistryError::ChunkOutOfOrder { current_size }) => {
            serde_json::json!({ "size": current_size })
        }
        ApiError::Registry(RegistryError::RangeNotSatisfiable { size }) => serde_json::json!({ "size": size }),
        _ => serde_json::Value::Null,
    }
}

impl ApiError {
    pub fn into_response(self) -> Response<Body> {
        let (status, code, mut message) = classify(&self);
        if status.is_server_error() {
            // Log the cause; tell the client no internals.
            tracing::error!(error = %message, "request failed");
            message = "internal error; see the registry log".into();
        }
        let body = serde_json::json!({
            "errors": [{ "code": code.as_str(), "message": message, "detail": detail(&self) }]
        });
        let mut resp = Response::new(Body::from(body.to_string()));
        *resp.status_mut() = status;
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let ApiError::Registry(RegistryError::RangeNotSatisfiable { size }) = &self {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                resp.headers_mut().insert(header::CONTENT_RANGE, v);
            }
        }
        resp
    }
}
