//! The accounts' HTTP JSON API under `/api` (docs/PROTOCOL.md):
//! `POST /api/signup`, `POST /api/login`, `POST /api/logout`, `GET /api/me`, `PATCH /api/me`,
//! `POST /api/me/password`, `POST /api/me/avatar`; and `GET /avatars/{id}`.
//!
//! Every request is answered here, never passed on: bodies are read up to `--max-json-bytes`
//! (a picture: `--max-avatar-bytes`; larger: `413`), bad JSON gets `400` with serde's reason, and every error is
//! `{"error": TEXT}`. A request with an `Origin` that is neither the server's own nor an
//! `--allow-origin` is refused `403` (cross-site request forgery). Store calls and password
//! hashing run off the async runtime.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::{Buf, BufMut};
use futures::{Stream, StreamExt};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use warp::http::header::{self, HeaderMap, HeaderValue};
use warp::http::{Method, StatusCode};
use warp::reply::Reply;

use crate::Server;
use crate::accounts::{self, Busy, Invalid, Profile, SESSION_COOKIE, Token};
use crate::avatar;
use crate::connections::ClientAddress;
use crate::http::{Peer, client_ip};
use crate::hub::{RoomInfo, RoomRefused};
use crate::message::now_ms;
use crate::store::{CreateAccountError, StoredAccount, StoredRoom};

pub type Response = warp::reply::Response;

/// The one answer to a wrong username or a wrong password, whichever it was.
const WRONG_LOGIN: &str = "wrong username or password";

/// What a request to `/api` brings.
pub struct ApiRequest {
    pub method: Method,
    /// The path after `/api/`.
    pub path: String,
    pub headers: HeaderMap,
    pub peer: Option<Peer>,
}

/// Answers one `/api` request.
pub async fn handle<B: Buf>(
    server: Arc<Server>,
    request: ApiRequest,
    body: impl Stream<Item = Result<B, warp::Error>> + Send,
) -> Response {
    let options = &server.limits.accounts;
    if foreign_origin(&request.headers, &options.allowed_origins) {
        return error(StatusCode::FORBIDDEN, "cross-origin request refused").into_response();
    }
    let limit = match request.path.as_str() {
        "me/avatar" => options.max_avatar_bytes,
        _ => options.max_json_bytes,
    };
    let body = match read_body(&request.headers, body, limit).await {
        Ok(body) => body,
        Err(refusal) => return refusal.into_response(),
    };
    let api = Api { server: &server, request: &request, body: &body };
    let result = match (request.method.as_str(), request.path.as_str()) {
        ("POST", "signup") => api.signup().await,
        ("POST", "login") => api.login().await,
        ("POST", "logout") => api.logout().await,
        ("GET", "me") => api.me().await,
        ("PATCH", "me") => api.rename().await,
        ("POST", "me/password") => api.change_password().await,
        ("POST", "me/avatar") => api.set_avatar().await,
        ("GET", "rooms") => Ok(warp::reply::json(&server.hub.rooms()).into_response()),
        ("POST", "rooms") => api.create_room().await,
        (_, "signup" | "login" | "logout" | "me" | "me/password" | "me/avatar" | "rooms") => {
            Err(error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"))
        }
        _ => Err(error(StatusCode::NOT_FOUND, "no such endpoint")),
    };
    result.unwrap_or_else(ApiError::into_response)
}

/// Whether the request has an `Origin` that is neither the server's own (`http://HOST` or
/// `https://HOST`, from its `Host` header) nor one of `allowed`. No `Origin`: not a page's
/// request, allowed.
pub fn foreign_origin(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else { return false };
    let Ok(origin) = origin.to_str() else { return true };
    let origin = origin.trim();
    let own = headers.get(header::HOST).and_then(|host| host.to_str().ok()).is_some_and(|host| {
        ["http://", "https://"].iter().any(|scheme| {
            origin.get(..scheme.len()).is_some_and(|given| given.eq_ignore_ascii_case(scheme))
                && origin.get(scheme.len()..).is_some_and(|given| given.eq_ignore_ascii_case(host))
        })
    });
    !own && !allowed
        .iter()
        .any(|allowed| allowed.trim_end_matches('/').eq_ignore_ascii_case(origin))
}

/// The session token in the request's cookies, if it carries the session cookie.
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == SESSION_COOKIE).then_some(value.trim())
        })
}

/// The account whose session the request's cookie holds, if any (a blocking store call).
pub async fn session_account(server: &Arc<Server>, headers: &HeaderMap) -> Option<StoredAccount> {
    let token = Token::parse(session_cookie(headers)?)?;
    let store = server.store.clone();
    let idle_ms = server.limits.accounts.session_idle_ms();
    let found = tokio::task::spawn_blocking(move || {
        store.session_account(&token.digest(), now_ms(), idle_ms)
    })
    .await;
    match found {
        Ok(Ok(account)) => account,
        Ok(Err(error)) => {
            tracing::error!(%error, "reading a session failed");
            None
        }
        Err(_) => None,
    }
}

/// Reads the body, refusing more than `limit` bytes while it arrives.
async fn read_body<B: Buf>(
    headers: &HeaderMap,
    body: impl Stream<Item = Result<B, warp::Error>> + Send,
    limit: usize,
) -> Result<Vec<u8>, ApiError> {
    let too_large =
        || error(StatusCode::PAYLOAD_TOO_LARGE, format!("the body is over {limit} bytes"));
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(too_large());
    }
    let mut read = Vec::new();
    let mut body = std::pin::pin!(body);
    while let Some(chunk) = body.next().await {
        let mut chunk =
            chunk.map_err(|_| error(StatusCode::BAD_REQUEST, "the body could not be read"))?;
        if read.len() + chunk.remaining() > limit {
            return Err(too_large());
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            let len = part.len();
            read.put_slice(part);
            chunk.advance(len);
        }
    }
    Ok(read)
}

/// A request refused: its status and reason, answered as `{"error": REASON}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    reason: Cow<'static, str>,
    /// Seconds, for `Retry-After`.
    retry_after: Option<&'static str>,
}

impl ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.reason });
        let mut response =
            warp::reply::with_status(warp::reply::json(&body), self.status).into_response();
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static(seconds));
        }
        response
    }
}

fn error(status: StatusCode, reason: impl Into<Cow<'static, str>>) -> ApiError {
    ApiError { status, reason: reason.into(), retry_after: None }
}

fn internal(error: impl std::fmt::Display) -> ApiError {
    tracing::error!(%error, "an account request failed");
    self::error(StatusCode::INTERNAL_SERVER_ERROR, "something went wrong on the server")
}

fn invalid(Invalid(reason): Invalid) -> ApiError {
    error(StatusCode::BAD_REQUEST, reason)
}

fn busy(_: Busy) -> ApiError {
    let refusal = error(StatusCode::SERVICE_UNAVAILABLE, Busy.to_string());
    ApiError { retry_after: Some("5"), ..refusal }
}

fn too_many() -> ApiError {
    let refusal = error(StatusCode::TOO_MANY_REQUESTS, "too many attempts; try again later");
    ApiError { retry_after: Some("60"), ..refusal }
}

fn profile(status: StatusCode, account: &StoredAccount) -> Response {
    warp::reply::with_status(warp::reply::json(&Profile::of(account)), status).into_response()
}

/// Runs a store call on the blocking pool; its error is a `500`.
async fn blocking<T: Send + 'static>(
    server: &Arc<Server>,
    call: impl FnOnce(&dyn crate::store::Store) -> anyhow::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    let store = server.store.clone();
    match tokio::task::spawn_blocking(move || call(&*store)).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(internal(error)),
        Err(error) => Err(internal(error)),
    }
}

#[derive(Deserialize)]
struct Credentials {
    username: String,
    password: String,
}

#[derive(Deserialize)]
struct Rename {
    name: String,
}

#[derive(Deserialize)]
struct NewRoom {
    name: String,
    #[serde(default)]
    topic: String,
}

#[derive(Deserialize)]
struct PasswordChange {
    current: String,
    new: String,
}

struct Api<'a> {
    server: &'a Arc<Server>,
    request: &'a ApiRequest,
    body: &'a [u8],
}

impl Api<'_> {
    fn json<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        serde_json::from_slice(self.body)
            .map_err(|reason| error(StatusCode::BAD_REQUEST, format!("bad JSON: {reason}")))
    }

    fn address(&self) -> Option<ClientAddress> {
        let peer = self.request.peer.as_ref()?;
        let forwarded =
            self.request.headers.get("x-forwarded-for").and_then(|value| value.to_str().ok());
        Some(ClientAddress::of(client_ip(peer, forwarded, &self.server.limits.trusted_proxies)))
    }

    /// Counts an attempt against the login rate (a username's, if given, and the address's).
    fn attempt(&self, username: Option<&str>) -> Result<(), ApiError> {
        let address = self.address().unwrap_or(ClientAddress::of([0, 0, 0, 0].into()));
        match self.server.accounts.limiter.attempt(username, address) {
            true => Ok(()),
            false => Err(too_many()),
        }
    }

    /// The account of the request's session; `401` without one.
    async fn account(&self) -> Result<(StoredAccount, Token), ApiError> {
        let not_logged_in = || error(StatusCode::UNAUTHORIZED, "not logged in");
        let token = session_cookie(&self.request.headers).and_then(Token::parse);
        let token = token.ok_or_else(not_logged_in)?;
        let account = session_account(self.server, &self.request.headers).await;
        Ok((account.ok_or_else(not_logged_in)?, token))
    }

    /// Starts a session for `account`: the answer, with its cookie.
    async fn log_in(
        &self,
        status: StatusCode,
        account: StoredAccount,
    ) -> Result<Response, ApiError> {
        let token = Token::generate().map_err(internal)?;
        let (digest, id) = (token.digest(), account.id.clone());
        let idle_ms = self.server.limits.accounts.session_idle_ms();
        blocking(self.server, move |store| store.create_session(&digest, &id, now_ms(), idle_ms))
            .await?;
        self.server.accounts.names.set(&account.id, &account.name);
        let mut response = profile(status, &account);
        self.set_cookie(
            &mut response,
            &token.to_hex(),
            self.server.limits.accounts.session_idle_ms() / 1000,
        );
        Ok(response)
    }

    fn set_cookie(&self, response: &mut Response, value: &str, max_age_secs: i64) {
        let secure = if self.server.limits.accounts.secure_cookies { "; Secure" } else { "" };
        let cookie = format!(
            "{SESSION_COOKIE}={value}; HttpOnly; SameSite=Lax; Path=/; Max-Age={max_age_secs}{secure}"
        );
        if let Ok(cookie) = HeaderValue::from_str(&cookie) {
            response.headers_mut().append(header::SET_COOKIE, cookie);
        }
    }

    async fn signup(&self) -> Result<Response, ApiError> {
        let Credentials { username, password } = self.json()?;
        let username = accounts::username(&username).map_err(invalid)?;
        accounts::check_password(&password).map_err(invalid)?;
        self.attempt(None)?;
        let taken = || error(StatusCode::CONFLICT, "that username is taken");
        let lookup = username.clone();
        if blocking(self.server, move |store| store.account_by_username(&lookup)).await?.is_some() {
            return Err(taken());
        }
        let password_hash = self.server.accounts.hasher.hash(password).await.map_err(busy)?;
        let account = StoredAccount {
            id: accounts::new_account_id(),
            name: username.clone(),
            username,
            password_hash: password_hash.map_err(internal)?,
        };
        let stored = account.clone();
        let created = tokio::task::spawn_blocking({
            let store = self.server.store.clone();
            move || store.create_account(&stored)
        })
        .await
        .map_err(internal)?;
        match created {
            Ok(()) => self.log_in(StatusCode::CREATED, account).await,
            Err(CreateAccountError::Taken) => Err(taken()),
            Err(CreateAccountError::Failed(error)) => Err(internal(error)),
        }
    }

    async fn login(&self) -> Result<Response, ApiError> {
        let Credentials { username, password } = self.json()?;
        let username = username.to_ascii_lowercase();
        // Only a well-formed username has its own bucket (the rest share the address's).
        let valid = accounts::username(&username).ok();
        self.attempt(valid.as_deref())?;
        let account = match valid {
            Some(username) => {
                blocking(self.server, move |store| store.account_by_username(&username)).await?
            }
            None => None,
        };
        let hash = account.as_ref().map(|account| account.password_hash.clone());
        let matches = self.server.accounts.hasher.verify(password, hash).await.map_err(busy)?;
        match account {
            Some(account) if matches => self.log_in(StatusCode::OK, account).await,
            _ => Err(error(StatusCode::UNAUTHORIZED, WRONG_LOGIN)),
        }
    }

    async fn logout(&self) -> Result<Response, ApiError> {
        if let Some(token) = session_cookie(&self.request.headers).and_then(Token::parse) {
            let digest = token.digest();
            blocking(self.server, move |store| store.delete_session(&digest)).await?;
        }
        let mut response =
            warp::reply::with_status(warp::reply(), StatusCode::NO_CONTENT).into_response();
        self.set_cookie(&mut response, "", 0);
        Ok(response)
    }

    /// `POST /api/rooms` `{"name", "topic"}`: `201` with the room. The hub holds the name
    /// (and checks the caps) before the store keeps it, so that two at once cannot both have it.
    async fn create_room(&self) -> Result<Response, ApiError> {
        let (account, _) = self.account().await?;
        let NewRoom { name, topic } = self.json()?;
        let room = StoredRoom {
            name: accounts::room_name(&name).map_err(invalid)?,
            topic: accounts::room_topic(&topic).map_err(invalid)?,
            owner: account.id,
            created_ms: now_ms(),
        };
        let limits = &self.server.limits;
        let hub = &self.server.hub;
        let taken = || error(StatusCode::CONFLICT, "that room name is taken");
        match hub.add_room(room.clone(), limits.max_rooms_per_account, limits.max_rooms) {
            Ok(()) => {}
            Err(RoomRefused::Taken) => return Err(taken()),
            Err(RoomRefused::Full(reason)) => return Err(error(StatusCode::BAD_REQUEST, reason)),
        }
        let stored = room.clone();
        let kept = tokio::task::spawn_blocking({
            let store = self.server.store.clone();
            move || store.create_room(&stored)
        })
        .await
        .map_err(internal)?;
        if let Err(refused) = kept {
            hub.remove_room(&room.name);
            return Err(match refused {
                CreateAccountError::Taken => taken(),
                CreateAccountError::Failed(error) => internal(error),
            });
        }
        self.server.broker.room_created(&room);
        let info = RoomInfo { name: room.name, topic: room.topic, online: 0 };
        Ok(warp::reply::with_status(warp::reply::json(&info), StatusCode::CREATED).into_response())
    }

    async fn me(&self) -> Result<Response, ApiError> {
        let (account, _) = self.account().await?;
        Ok(profile(StatusCode::OK, &account))
    }

    /// Tells the hub (and in a cluster the other nodes) about `account`'s new name or picture.
    fn profile_changed(&self, account: &StoredAccount) {
        let name = self.server.accounts.names.set(&account.id, &account.name);
        self.server.broker.profile_changed(&account.id, &name);
        self.server.hub.update_profile(&account.id, name);
    }

    async fn rename(&self) -> Result<Response, ApiError> {
        let (mut account, _) = self.account().await?;
        let Rename { name } = self.json()?;
        account.name = accounts::display_name(&name).map_err(invalid)?;
        // Each rename is told to everyone in the account's channels (the feed may hold
        // thousands): counted like a login, so that one account cannot flood them.
        self.attempt(Some(&account.username))?;
        let (id, name) = (account.id.clone(), account.name.clone());
        blocking(self.server, move |store| store.set_name(&id, &name)).await?;
        self.profile_changed(&account);
        Ok(profile(StatusCode::OK, &account))
    }

    /// `POST /api/me/avatar` with a PNG, JPEG or WebP body: re-encoded as a 256×256 PNG and
    /// kept, `204`; a body that is not such a picture, or declares more than
    /// `--max-avatar-pixels` a side, `400`. Decoding runs on the blocking pool, two at once.
    async fn set_avatar(&self) -> Result<Response, ApiError> {
        let (account, _) = self.account().await?;
        if self.body.is_empty() {
            return Err(error(StatusCode::BAD_REQUEST, "no picture in the body"));
        }
        // Told to everyone in the account's channels, as a rename is: counted the same way.
        self.attempt(Some(&account.username))?;
        let max_side = self.server.limits.accounts.max_avatar_pixels;
        let permit = avatar::DECODING.acquire().await.map_err(internal)?;
        let bytes = self.body.to_vec();
        let png = tokio::task::spawn_blocking(move || avatar::reencode(&bytes, max_side))
            .await
            .map_err(internal)?;
        drop(permit);
        let png = png.map_err(|reason| error(StatusCode::BAD_REQUEST, reason))?;
        let id = account.id.clone();
        blocking(self.server, move |store| store.set_avatar(&id, &png)).await?;
        // Same address, new picture: the frame tells those who show it to fetch it again.
        self.profile_changed(&account);
        Ok(warp::reply::with_status(warp::reply(), StatusCode::NO_CONTENT).into_response())
    }

    async fn change_password(&self) -> Result<Response, ApiError> {
        let (account, token) = self.account().await?;
        let PasswordChange { current, new } = self.json()?;
        accounts::check_password(&new).map_err(invalid)?;
        self.attempt(Some(&account.username))?;
        let hasher = &self.server.accounts.hasher;
        if !hasher.verify(current, Some(account.password_hash.clone())).await.map_err(busy)? {
            return Err(error(StatusCode::FORBIDDEN, "the current password is wrong"));
        }
        let hash = hasher.hash(new).await.map_err(busy)?.map_err(internal)?;
        let (id, keep) = (account.id.clone(), token.digest());
        blocking(self.server, move |store| store.set_password_hash(&id, &hash, &keep)).await?;
        Ok(warp::reply::with_status(warp::reply(), StatusCode::NO_CONTENT).into_response())
    }
}

/// `GET /avatars/{id}` (and `HEAD`): the account's picture as PNG, or the one drawn from its
/// id when it has none; `404` for an id that is no account's. `Cache-Control: no-cache` with
/// an `ETag`, so that a changed picture is seen at once and an unchanged one costs a `304`.
pub async fn avatar(server: Arc<Server>, id: String, headers: HeaderMap) -> Response {
    let not_found = || error(StatusCode::NOT_FOUND, "no such account").into_response();
    if id.len() != 32 || !id.bytes().all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f')) {
        return not_found();
    }
    let lookup = id.clone();
    let found = blocking(&server, move |store| {
        Ok(match store.account_by_id(&lookup)? {
            Some(_) => Some(store.avatar(&lookup)?),
            None => None,
        })
    })
    .await;
    let png = match found {
        Ok(Some(Some(png))) => png,
        Ok(Some(None)) => match tokio::task::spawn_blocking(move || avatar::generated(&id)).await {
            Ok(png) => png,
            Err(error) => return internal(error).into_response(),
        },
        Ok(None) => return not_found(),
        Err(refusal) => return refusal.into_response(),
    };
    let etag = avatar::etag(&png);
    let unchanged = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|tag| tag.trim() == etag || tag.trim() == "*");
    let mut response = match unchanged {
        true => warp::reply::with_status(warp::reply(), StatusCode::NOT_MODIFIED).into_response(),
        false => png.into_response(),
    };
    let headers = response.headers_mut();
    if !unchanged {
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("image/png"));
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(etag) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, etag);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn only_a_foreign_origin_is_foreign() {
        let allowed = vec!["https://chat.example.org".to_owned()];
        let host = ("host", "127.0.0.1:8000");
        assert!(!foreign_origin(&headers(&[host]), &allowed), "no Origin: not a page");
        assert!(!foreign_origin(&headers(&[host, ("origin", "http://127.0.0.1:8000")]), &allowed));
        assert!(!foreign_origin(&headers(&[host, ("origin", "https://127.0.0.1:8000")]), &allowed));
        assert!(!foreign_origin(
            &headers(&[host, ("origin", "https://chat.example.org")]),
            &allowed
        ));
        assert!(foreign_origin(&headers(&[host, ("origin", "http://evil.example")]), &allowed));
        assert!(foreign_origin(&headers(&[host, ("origin", "http://127.0.0.1:8001")]), &allowed));
        assert!(foreign_origin(&headers(&[host, ("origin", "null")]), &allowed));
        assert!(foreign_origin(&headers(&[("origin", "http://127.0.0.1:8000")]), &[]), "no Host");
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let token = "ab".repeat(32);
        let cookie = format!("theme=dark; {SESSION_COOKIE}={token}; x=y");
        assert_eq!(session_cookie(&headers(&[("cookie", &cookie)])), Some(token.as_str()));
        assert_eq!(session_cookie(&headers(&[("cookie", "theme=dark")])), None);
    }
}
