//! [`ApiError`]: what went wrong talking to the API server, worded as client-go words it, so
//! that an operator comparing our logs with SPIRE's (or searching for the text) finds the
//! same sentences.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Errors of [`super::ApiSettings`] and [`super::ApiServer`]. Messages never contain token
/// or key material. `Clone` because one answer is shared by coalesced callers.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// client-go's `rest.ErrNotInCluster`, word for word.
    #[error(
        "unable to load in-cluster configuration, KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT must be defined"
    )]
    NotInCluster,
    /// No configuration anywhere `ctrl.GetConfig()` looks.
    #[error(
        "no API server configuration: {in_cluster}; KUBECONFIG is not set and {home_config} does not exist"
    )]
    NoConfiguration {
        in_cluster: Box<ApiError>,
        home_config: PathBuf,
    },
    /// A file named by the configuration could not be read (bounded read, regular files
    /// only).
    #[error("unable to read {what} {path}: {reason}")]
    ReadFile {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    /// A kubeconfig that is not valid or not complete.
    #[error("invalid kubeconfig {path}: {reason}")]
    Kubeconfig { path: PathBuf, reason: String },
    /// A kubeconfig field this client deliberately does not implement.
    #[error(
        "kubeconfig {path}: {field} is not supported by the attestor; use a token, tokenFile or client certificate instead"
    )]
    Unsupported { path: PathBuf, field: String },
    /// CA, client certificate or key bytes that do not make a TLS configuration.
    #[error("unable to build the API server TLS configuration: {reason}")]
    Tls { reason: String },
    /// A token file that is empty or not usable in a header.
    #[error("token file {path} {problem}")]
    InvalidToken {
        path: PathBuf,
        problem: &'static str,
    },
    /// The server answered with an error. `message` is the `Status` message when the body
    /// was a `Status` (client-go's `StatusError`), else client-go's generic text for the code.
    #[error("{message}")]
    Status {
        code: u16,
        /// `NotFound`, `Forbidden`, `TooManyRequests`, … ("" when the server said none).
        reason: String,
        message: String,
    },
    /// No answer: connection refused, TLS failure, reset, timeout. Printed as Go prints a
    /// `*url.Error`: `Get "https://…/api/v1/namespaces/x": <cause>`.
    #[error("{method} \"{url}\": {cause}")]
    Transport {
        method: &'static str,
        url: String,
        cause: String,
    },
    /// An answer larger than the bound for its kind (see the module doc).
    #[error(
        "{method} \"{url}\": the response exceeds the {limit_mib} MiB limit for {what}; the attestor refuses larger answers"
    )]
    TooLarge {
        method: &'static str,
        url: String,
        what: &'static str,
        limit_mib: usize,
    },
    /// A 2xx answer that is not the JSON expected.
    #[error("{method} \"{url}\": unable to decode the response: {reason}")]
    Decode {
        method: &'static str,
        url: String,
        reason: String,
    },
    /// The RESTMapper's `NoResourceMatchError` text (`KindFor` with no version).
    #[error("no matches for {group}/, Resource={plural}")]
    NoMatch { group: String, plural: String },
    /// A namespace or name that cannot be part of a Kubernetes URL path.
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidName {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
    /// The background request shared by coalesced callers ended without an answer (its
    /// task panicked or the runtime is shutting down).
    #[error("the shared API server request ended without an answer")]
    Abandoned,
}

impl ApiError {
    /// The object does not exist (HTTP 404 / reason `NotFound`, or absent from a fresh
    /// cache), as client-go's `apierrors.IsNotFound`.
    pub fn is_not_found(&self) -> bool {
        matches!(self, ApiError::Status { code, reason, .. } if *code == 404 || reason == "NotFound")
    }

    /// Worth trying again later, unchanged: no answer at all (connection, timeout, cut
    /// body), or an answer saying the server is busy or failing (408, 429, 5xx). Not for
    /// 401/403/404 and configuration errors, which need someone to act.
    pub fn retryable(&self) -> bool {
        match self {
            ApiError::Transport { .. } | ApiError::Abandoned => true,
            ApiError::Status { code, .. } => *code == 408 || *code == 429 || *code >= 500,
            _ => false,
        }
    }

    /// The HTTP status of an error answer.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            ApiError::Status { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// What a controller-runtime cache answers for a name absent from its store
    /// (`apierrors.NewNotFound`): `namespaces "x" not found`, `deployments.apps "x" not found`.
    pub(super) fn not_found(group: &str, plural: &str, name: &str) -> ApiError {
        ApiError::Status {
            code: 404,
            reason: "NotFound".into(),
            message: format!("{} \"{name}\" not found", group_resource(group, plural)),
        }
    }

    pub(super) fn read_file(
        what: &'static str,
        path: &std::path::Path,
        reason: impl ToString,
    ) -> ApiError {
        ApiError::ReadFile {
            what,
            path: path.to_owned(),
            reason: reason.to_string(),
        }
    }
}

/// `schema.GroupResource.String()`: `pods`, `deployments.apps`.
pub(super) fn group_resource(group: &str, plural: &str) -> String {
    if group.is_empty() {
        plural.to_owned()
    } else {
        format!("{plural}.{group}")
    }
}

/// The parts of a `metav1.Status` an error needs.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct StatusBody {
    pub kind: String,
    pub message: String,
    pub reason: String,
    pub code: u16,
}

/// What the request was, for client-go's ` (get namespaces x)` suffix on generic errors.
#[derive(Debug, Clone, Default)]
pub(super) struct Target {
    pub verb: &'static str,
    pub group: String,
    pub plural: String,
    pub name: String,
}

/// The error for a non-2xx answer: the `Status` it carries (client-go's `StatusError`),
/// else client-go's `NewGenericServerResponse` text for the code.
pub(super) fn from_response(code: u16, body: &[u8], target: &Target) -> ApiError {
    if let Ok(status) = serde_json::from_slice::<StatusBody>(body)
        && status.kind == "Status"
        && !status.message.is_empty()
    {
        return ApiError::Status {
            code: if status.code == 0 { code } else { status.code },
            reason: status.reason,
            message: status.message,
        };
    }
    // client-go uses a text body as the "server message" (it only inspects text types;
    // any body here is at most the error preview).
    let server_message = match String::from_utf8_lossy(body).trim() {
        "" => "unknown".to_owned(),
        text => text.to_owned(),
    };
    let (reason, mut message) = match code {
        400 => ("BadRequest", "the server rejected our request for an unknown reason".to_owned()),
        401 => (
            "Unauthorized",
            "the server has asked for the client to provide credentials".to_owned(),
        ),
        // "the server message has details about who is trying to perform what action"
        403 => ("Forbidden", server_message.clone()),
        404 => ("NotFound", "the server could not find the requested resource".to_owned()),
        405 => (
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource".to_owned(),
        ),
        406 => (
            "NotAcceptable",
            "the server was unable to respond with a content type that the client supports".to_owned(),
        ),
        409 => ("Conflict", "the server reported a conflict".to_owned()),
        422 => (
            "Invalid",
            "the server rejected our request due to an error in our request".to_owned(),
        ),
        429 => (
            "TooManyRequests",
            "the server has received too many requests and has asked us to try again later".to_owned(),
        ),
        503 => (
            "ServiceUnavailable",
            "the server is currently unable to handle the request".to_owned(),
        ),
        504 => (
            "Timeout",
            "the server was unable to return a response in the time allotted, but may still be processing the request".to_owned(),
        ),
        c if c >= 500 => (
            "InternalError",
            format!("an error on the server ({server_message:?}) has prevented the request from succeeding"),
        ),
        c => (
            "",
            format!("the server responded with the status code {c} but did not return more information"),
        ),
    };
    if !target.plural.is_empty() {
        let resource = group_resource(&target.group, &target.plural);
        if target.name.is_empty() {
            message = format!("{message} ({} {resource})", target.verb);
        } else {
            message = format!("{message} ({} {resource} {})", target.verb, target.name);
        }
    }
    ApiError::Status {
        code,
        reason: reason.into(),
        message,
    }
}

/// What Go's `http.Client` says when its `Timeout` expires.
pub(super) fn timeout_cause(after: Duration) -> String {
    format!(
        "context deadline exceeded (Client.Timeout of {}s exceeded while awaiting the response)",
        after.as_secs()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(verb: &'static str, plural: &str, name: &str) -> Target {
        Target {
            verb,
            group: String::new(),
            plural: plural.into(),
            name: name.into(),
        }
    }

    #[test]
    fn a_status_body_gives_its_message() {
        let body = br#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"namespaces \"x\" not found","reason":"NotFound","details":{"name":"x","kind":"namespaces"},"code":404}"#;
        let err = from_response(404, body, &target("get", "namespaces", "x"));
        assert_eq!(err.to_string(), r#"namespaces "x" not found"#);
        assert!(err.is_not_found());
        assert!(!err.retryable());

        let body = br#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"namespaces \"x\" is forbidden: User \"system:serviceaccount:spire:spire-agent\" cannot get resource \"namespaces\" in API group \"\" at the cluster scope","reason":"Forbidden","code":403}"#;
        let err = from_response(403, body, &target("get", "namespaces", "x"));
        assert_eq!(
            err.to_string(),
            r#"namespaces "x" is forbidden: User "system:serviceaccount:spire:spire-agent" cannot get resource "namespaces" in API group "" at the cluster scope"#
        );
        assert!(!err.is_not_found());

        let body = br#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401}"#;
        assert_eq!(
            from_response(401, body, &Target::default()).to_string(),
            "Unauthorized"
        );
    }

    #[test]
    fn other_bodies_get_client_go_generic_texts() {
        let err = from_response(
            404,
            b"404 page not found\n",
            &target("get", "namespaces", "x"),
        );
        assert_eq!(
            err.to_string(),
            "the server could not find the requested resource (get namespaces x)"
        );
        assert!(err.is_not_found());

        let err = from_response(500, b"boom", &Target::default());
        assert_eq!(
            err.to_string(),
            r#"an error on the server ("boom") has prevented the request from succeeding"#
        );
        assert!(err.retryable());

        let err = from_response(502, b"", &target("list", "pods", ""));
        assert_eq!(
            err.to_string(),
            r#"an error on the server ("unknown") has prevented the request from succeeding (list pods)"#
        );

        let err = from_response(401, b"", &Target::default());
        assert_eq!(
            err.to_string(),
            "the server has asked for the client to provide credentials"
        );
        assert!(!err.retryable());

        let err = from_response(429, b"slow down", &Target::default());
        assert!(err.retryable());
        assert_eq!(err.http_status(), Some(429));

        let mut apps = target("get", "deployments", "web");
        apps.group = "apps".into();
        assert_eq!(
            from_response(418, b"", &apps).to_string(),
            "the server responded with the status code 418 but did not return more information (get deployments.apps web)"
        );
    }

    #[test]
    fn cache_not_found_reads_like_controller_runtime() {
        let err = ApiError::not_found("", "namespaces", "x");
        assert_eq!(err.to_string(), r#"namespaces "x" not found"#);
        assert!(err.is_not_found());
        assert_eq!(
            ApiError::not_found("apps", "replicasets", "r").to_string(),
            r#"replicasets.apps "r" not found"#
        );
    }

    #[test]
    fn transport_errors_read_like_go_url_errors() {
        let err = ApiError::Transport {
            method: "Get",
            url: "https://127.0.0.1:6443/api/v1/namespaces/default".into(),
            cause: "connection refused".into(),
        };
        assert_eq!(
            err.to_string(),
            r#"Get "https://127.0.0.1:6443/api/v1/namespaces/default": connection refused"#
        );
        assert!(err.retryable());
        assert_eq!(
            ApiError::NoMatch {
                group: "apps".into(),
                plural: "widgets".into()
            }
            .to_string(),
            "no matches for apps/, Resource=widgets"
        );
    }
}
