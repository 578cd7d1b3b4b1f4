//! URL paths of the distribution spec, parsed into endpoints.

/// An endpoint, with the raw (not yet validated) path parts it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route<'a> {
    /// `/v2/`
    Base,
    /// `/v2/_catalog`
    Catalog,
    /// `/v2/<name>/tags/list`
    Tags { name: &'a str },
    /// `/v2/<name>/manifests/<reference>`
    Manifest { name: &'a str, reference: &'a str },
    /// `/v2/<name>/blobs/<digest>`
    Blob { name: &'a str, digest: &'a str },
    /// `/v2/<name>/blobs/uploads/` (empty `id`) or `/v2/<name>/blobs/uploads/<id>`
    Upload { name: &'a str, id: &'a str },
    /// `/v2/<name>/referrers/<digest>`
    Referrers { name: &'a str, digest: &'a str },
    /// `/token`: the Docker token protocol endpoint.
    Token,
    /// `/healthz`
    Health,
    /// `/metrics`
    Metrics,
    /// `/admin/gc`: run garbage collection.
    AdminGc,
    /// `/admin/usage`: storage used per repository and quota.
    AdminUsage,
    NotFound,
}

impl Route<'_> {
    /// A low-cardinality label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Route::Base => "base",
            Route::Catalog => "catalog",
            Route::Tags { .. } => "tags",
            Route::Manifest { .. } => "manifest",
            Route::Blob { .. } => "blob",
            Route::Upload { .. } => "upload",
            Route::Referrers { .. } => "referrers",
            Route::Token => "token",
            Route::Health => "health",
            Route::Metrics => "metrics",
            Route::AdminGc => "admin_gc",
            Route::AdminUsage => "admin_usage",
            Route::NotFound => "not_found",
        }
    }
}

pub fn parse(path: &str) -> Route<'_> {
    match path {
        "/healthz" => return Route::Health,
        "/token" => return Route::Token,
        "/metrics" => return Route::Metrics,
        "/admin/gc" => return Route::AdminGc,
        "/admin/usage" => return Route::AdminUsage,
        "/v2" | "/v2/" => return Route::Base,
        "/v2/_catalog" => return Route::Catalog,
        _ => {}
    }
    let Some(rest) = path.strip_prefix("/v2/") else { return Route::NotFound };
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Route::Tags { name };
    }
    let Some((head, last)) = rest.rsplit_once('/') else { return Route::NotFound };
    let Some((name, kind)) = head.rsplit_once('/') else { return Route::NotFound };
    match kind {
        "manifests" => Route::Manifest { name, reference: last },
        "referrers" => Route::Referrers { name, digest: last },
        "blobs" if last == "uploads" => Route::Upload { name, id: "" },
        "blobs" => Route::Blob { name, digest: last },
        "uploads" => match name.strip_suffix("/blobs") {
            Some(name) => Route::Upload { name, id: last },
            None => Route::NotFound,
        },
        _ => Route::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_spec_paths() {
        assert_eq!(parse("/v2/"), Route::Base);
        assert_eq!(parse("/v2/_catalog"), Route::Catalog);
        assert_eq!(parse("/v2/a/b/tags/list"), Route::Tags { name: "a/b" });
        assert_eq!(parse("/v2/a/manifests/latest"), Route::Manifest { name: "a", reference: "latest" });
        assert_eq!(
            parse("/v2/x/blobs/y/manifests/v1"),
            Route::Manifest { name: "x/blobs/y", reference: "v1" }
        );
        assert_eq!(parse("/v2/a/b/blobs/sha256:00"), Route::Blob { name: "a/b", digest: "sha256:00" });
        assert_eq!(parse("/v2/a/blobs/uploads/"), Route::Upload { name: "a", id: "" });
        assert_eq!(parse("/v2/a/blobs/uploads"), Route::Upload { name: "a", id: "" });
        assert_eq!(parse("/v2/a/b/blobs/uploads/abc"), Route::Upload { name: "a/b", id: "abc" });
        assert_eq!(parse("/v2/a/referrers/sha256:00"), Route::Referrers { name: "a", digest: "sha256:00" });
        assert_eq!(parse("/v2/a"), Route::NotFound);
        assert_eq!(parse("/v2/a/uploads/x"), Route::NotFound);
        assert_eq!(parse("/other"), Route::NotFound);
    }
}
