//! Credentials on HTTP: `Authorization: Basic base64(user:password)` or
//! `Authorization: Bearer <token>` (a token made by an administrator, see
//! [`crate::auth`]). A request without credentials while authentication is required, or
//! with wrong ones, is answered 401 with `WWW-Authenticate`; one its user's role or key
//! prefix forbids, 403. Status, health, metrics and the OpenAPI document need none.
//!
//! Also the user endpoints (admin only): `GET /v1/users`, `PUT /v1/users/{name}`
//! (`{"password", "role", "prefix", "enabled"}`), `DELETE /v1/users/{name}` and
//! `POST /v1/users/{name}/tokens` (answers the new token, shown once, and its id) and
//! `DELETE /v1/users/{name}/tokens/{id}` (revokes that one token).

use super::error::ApiError;
use super::AppState;
use crate::auth::{Credential, Identity, Role, UserChange};
use crate::command::WriteOp;
use crate::kv::handle::Writer;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde_json::{json, Value};

/// The credential an `Authorization` header carries (None: no header).
pub fn credential(h: &HeaderMap) -> Result<Option<Credential>, ApiError> {
    let Some(v) = h.get(axum::http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let bad = || {
        ApiError::from_node(crate::error::Error::Unauthenticated(
            "the Authorization header must be `Basic base64(user:password)` or `Bearer <token>`"
                .into(),
        ))
    };
    let v = v.to_str().map_err(|_| bad())?;
    let (scheme, rest) = v.split_once(' ').ok_or_else(bad)?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("basic") {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .map_err(|_| bad())?;
        let colon = raw.iter().position(|b| *b == b':').ok_or_else(bad)?;
        Ok(Some(Credential::Password {
            user: String::from_utf8_lossy(&raw[..colon]).into_owned(),
            secret: raw[colon + 1..].to_vec(),
        }))
    } else if scheme.eq_ignore_ascii_case("bearer") {
        Ok(Some(Credential::Token(rest.to_string())))
    } else {
        Err(bad())
    }
}

/// Who the request runs as.
pub async fn identity(s: &AppState, h: &HeaderMap) -> Result<Identity, ApiError> {
    let cred = credential(h)?;
    Ok(s.info.auth.authenticate(cred, "http").await?)
}

pub(crate) async fn admin(s: &AppState, h: &HeaderMap) -> Result<Identity, ApiError> {
    let id = identity(s, h).await?;
    id.check_admin()?;
    Ok(id)
}

async fn propose(s: &AppState, who: &Identity, op: WriteOp) -> Result<bool, ApiError> {
    let by = Writer::once(who.user.clone());
    Ok(s.kv.user_change(&by, op).await?)
}

/// `GET /v1/users`: every user (never a secret).
pub async fn list(State(s): State<AppState>, h: HeaderMap) -> Result<Response, ApiError> {
    admin(&s, &h).await?;
    let users: Vec<Value> = s
        .info
        .auth
        .users()?
        .into_iter()
        .map(|(name, u)| {
            json!({
                "name": name,
                "role": u.role.as_str(),
                "prefix": String::from_utf8_lossy(&u.prefix),
                "enabled": u.enabled,
                "passwords": u.passwords.len(),
                "tokens": u.tokens.iter().map(|t| t.id.clone()).collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(Json(json!({ "users": users })).into_response())
}

/// The body of `PUT /v1/users/{name}`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserBody {
    pub password: Option<String>,
    pub role: Option<String>,
    pub prefix: Option<String>,
    pub enabled: Option<bool>,
}

/// `PUT /v1/users/{name}`: creates or changes a user. A new password replaces the old
/// ones (and the user's tokens stay).
pub async fn put(
    State(s): State<AppState>,
    Path(name): Path<String>,
    h: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let who = admin(&s, &h).await?;
    let b: UserBody = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad(format!("the body must be a JSON user object: {e}")))?;
    let mut change = UserChange {
        role: b.role.as_deref().map(Role::parse).transpose()?,
        prefix: b.prefix.map(String::into_bytes),
        enabled: b.enabled,
        enable_if_new: true,
        ..Default::default()
    };
    if let Some(p) = b.password {
        change.reset_passwords = true;
        let hash = crate::auth::hash_secret_async(p.into_bytes()).await?;
        change.add_passwords.push(hash);
    }
    let changed = propose(
        &s,
        &who,
        WriteOp::SetUser {
            name,
            change,
            only_if_no_users: false,
        },
    )
    .await?;
    Ok(Json(json!({ "changed": changed })).into_response())
}

/// `DELETE /v1/users/{name}`.
pub async fn delete(
    State(s): State<AppState>,
    Path(name): Path<String>,
    h: HeaderMap,
) -> Result<Response, ApiError> {
    let who = admin(&s, &h).await?;
    let deleted = propose(&s, &who, WriteOp::DeleteUser { name }).await?;
    Ok(Json(json!({ "deleted": deleted })).into_response())
}

/// `POST /v1/users/{name}/tokens`: a new bearer token for an existing user, shown once
/// (only its hash is stored).
pub async fn token(
    State(s): State<AppState>,
    Path(name): Path<String>,
    h: HeaderMap,
) -> Result<Response, ApiError> {
    let who = admin(&s, &h).await?;
    crate::auth::check_name(&name)?;
    if s.info.auth.user(&name)?.is_none() {
        return Err(ApiError::not_found("no such user"));
    }
    let (token, op) = crate::auth::token_write(&name).await?;
    propose(&s, &who, op).await?;
    let id = crate::auth::token_id(&token)
        .unwrap_or_default()
        .to_string();
    Ok(Json(json!({ "token": token, "id": id })).into_response())
}

/// `DELETE /v1/users/{name}/tokens/{token}`: revokes one token of the user, by its id (as
/// `GET /v1/users` lists them) or the whole token; 404 if the user holds no such token.
pub async fn revoke_token(
    State(s): State<AppState>,
    Path((name, token)): Path<(String, String)>,
    h: HeaderMap,
) -> Result<Response, ApiError> {
    let who = admin(&s, &h).await?;
    let op = crate::auth::revoke_token_write(&name, &token)?;
    let by = Writer::once(who.user.clone());
    match s.kv.user_change(&by, op).await {
        Err(crate::error::Error::InvalidInput(why)) => {
            Err(ApiError::not_found(format!("user {name}: {why}")))
        }
        Err(e) => Err(ApiError::from_node(e)),
        Ok(_) => Ok(Json(json!({ "revoked": true })).into_response()),
    }
}
