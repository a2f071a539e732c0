//! `/v1/objects/{name}`: persistable objects (the SDK's `Persistable`), a
//! JSON object of fields each any JSON value.
//!
//! The bus writes fields and never removes one, so `PUT` replaces the
//! object by writing every field of the body and `null` into each stored
//! field the body leaves out; `PATCH` writes only the body's fields.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use busmq_client::{Persistable, Value};

use super::Shared;
use super::schema::{self, ObjectPath, ObjectQuery};
use crate::error::HttpError;
use crate::params::{bad_path, body, seconds_param};
use crate::{Gateway, payload};

/// The fields of an object ([`schema::Fields`]).
type Fields = BTreeMap<String, Value>;

/// `?ttl=SECONDS`: above 0, when given, rounded up to whole seconds as the
/// bus counts them (the broker judges the ceiling).
fn ttl_param(query: &Option<String>) -> Result<Option<Duration>, HttpError> {
    seconds_param(query, "ttl", true)?
        .map(|seconds| {
            Duration::try_from_secs_f64(seconds.ceil()).map_err(|_| {
                HttpError::BadParameter(format!("ttl of {seconds} seconds is out of range"))
            })
        })
        .transpose()
}

/// The object `name`, loaded: its fields, and whether it is stored.
async fn load(gw: &Gateway, name: &str) -> Result<(Persistable, bool), HttpError> {
    let mut object = gw.bus.persistable(name);
    let loaded = object.load().await?;
    Ok((object, loaded.exists))
}

/// The fields `PUT` or `PATCH` write, from the JSON body.
fn fields_of(
    headers: &HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<Fields, HttpError> {
    let bytes = body(bytes, limit)?;
    match payload::json_from_request(headers, &bytes)? {
        Value::Object(fields) => Ok(fields.into_iter().collect()),
        _ => Err(HttpError::InvalidBody(
            "an object's body is a JSON object of its fields".into(),
        )),
    }
}

/// Writes the body's fields into the object of the path (and, with
/// `replace`, `null` into every stored field they leave out), with the ttl
/// of `query`; answers the object's fields after.
async fn write(
    gw: &Gateway,
    path: Result<Path<String>, PathRejection>,
    query: &Option<String>,
    headers: &HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
    replace: bool,
) -> Result<Json<Fields>, HttpError> {
    let Path(name) = path.map_err(bad_path)?;
    let fields = fields_of(headers, bytes, gw.config.max_body_bytes)?;
    let ttl = ttl_param(query)?;
    let (mut object, _) = load(gw, &name).await?;
    if replace {
        let left_out: Vec<String> = object
            .fields()
            .keys()
            .filter(|field| !fields.contains_key(*field))
            .cloned()
            .collect();
        for field in left_out {
            object.set(field, Value::Null);
        }
    }
    for (field, value) in fields {
        object.set(field, value);
    }
    if let Some(ttl) = ttl {
        // Touches now and makes the save carry the ttl; the handle (and its
        // periodic touch) ends with this request, so the object expires
        // `ttl` after this write unless written again.
        object.persist(ttl).await?;
    }
    object.save().await?;
    Ok(Json(object.fields().clone()))
}

/// The object's fields. 404 when it is not stored (never saved, or
/// expired).
#[utoipa::path(
    get,
    path = "/v1/objects/{name}",
    tag = "objects",
    params(ObjectPath),
    responses((status = 200, description = "The fields", body = schema::Fields)),
)]
pub async fn get(
    State(gw): Shared,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Fields>, HttpError> {
    let Path(name) = path.map_err(bad_path)?;
    let (object, exists) = load(&gw, &name).await?;
    if !exists {
        return Err(HttpError::ObjectNotFound(format!(
            "no object {name:?} is stored (never saved, or expired)"
        )));
    }
    Ok(Json(object.fields().clone()))
}

/// Replaces the object: the body's fields, and `null` in each stored field
/// the body leaves out (the bus removes no field).
#[utoipa::path(
    put,
    path = "/v1/objects/{name}",
    tag = "objects",
    params(ObjectPath, ObjectQuery),
    request_body(content = schema::Fields, content_type = "application/json"),
    responses((status = 200, description = "The fields after", body = schema::Fields)),
)]
pub async fn put(
    State(gw): Shared,
    path: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Json<Fields>, HttpError> {
    write(&gw, path, &query, &headers, bytes, true).await
}

/// Merges the body's fields into the object; the others stay.
#[utoipa::path(
    patch,
    path = "/v1/objects/{name}",
    tag = "objects",
    params(ObjectPath, ObjectQuery),
    request_body(content = schema::Fields, content_type = "application/json"),
    responses((status = 200, description = "The fields after", body = schema::Fields)),
)]
pub async fn patch(
    State(gw): Shared,
    path: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Json<Fields>, HttpError> {
    write(&gw, path, &query, &headers, bytes, false).await
}
