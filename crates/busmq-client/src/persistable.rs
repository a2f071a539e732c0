//! A persistable object: node-busmq's `persistify`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use busmq_proto::v1 as pb;
use busmq_proto::v1::objects_client::ObjectsClient;
use serde_json::Value;
use tokio::task::AbortHandle;

use crate::trace_context::Transport as Channel;
use crate::{Error, Result};

/// What [`Persistable::load`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// True when the object exists on the bus (was saved and has not
    /// expired).
    pub exists: bool,
    /// The id of the object that was searched for: its name.
    pub id: String,
}

/// A named object whose fields live on the bus: node-busmq's
/// `bus.persistify(name, object, properties)`.
///
/// Fields hold JSON values. [`set`](Self::set) marks a field dirty, and
/// [`save`](Self::save) writes only the dirty fields; [`load`](Self::load)
/// reads every field and marks all clean. An object never expires unless
/// [`persist`](Self::persist) was called: then a background task touches it
/// periodically to keep it alive, and after [`unpersist`](Self::unpersist)
/// (or dropping the handle) it expires once its ttl runs out.
///
/// ```no_run
/// # async fn demo() -> Result<(), busmq_client::Error> {
/// let bus = busmq_client::Bus::connect("http://127.0.0.1:50051").await?;
/// let mut p = bus.persistable("obj");
/// p.set("foo", "hello");
/// p.set("bar", 1);
/// p.set("zoo", true);
/// p.save().await?; // foo, bar and zoo are saved
///
/// p.set("foo", "world");
/// p.save().await?; // only foo is saved
///
/// let mut p2 = bus.persistable("obj");
/// let loaded = p2.load().await?;
/// assert!(loaded.exists);
/// assert_eq!(p2.get("foo"), Some(&serde_json::json!("world")));
/// # Ok(()) }
/// ```
pub struct Persistable {
    client: ObjectsClient<Channel>,
    name: String,
    fields: BTreeMap<String, Value>,
    dirty: BTreeSet<String>,
    persisting: Option<Persisting>,
}

/// The periodic touch of a persisted object.
struct Persisting {
    /// Whole seconds (rounded up), as the server counts them.
    ttl: Duration,
    toucher: AbortHandle,
}

impl Drop for Persisting {
    fn drop(&mut self) {
        self.toucher.abort();
    }
}

impl fmt::Debug for Persistable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Persistable")
            .field("name", &self.name)
            .field("fields", &self.fields)
            .field("dirty", &self.dirty)
            .field(
                "persist_ttl_seconds",
                &self.persisting.as_ref().map(|p| p.ttl.as_secs()),
            )
            .finish()
    }
}

impl Persistable {
    pub(crate) fn new(client: ObjectsClient<Channel>, name: String) -> Self {
        Persistable {
            client,
            name,
            fields: BTreeMap::new(),
            dirty: BTreeSet::new(),
            persisting: None,
        }
    }

    /// The object's name (its id on the bus).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The value of `field`, as last set or loaded.
    pub fn get(&self, field: &str) -> Option<&Value> {
        self.fields.get(field)
    }

    /// Every field, as last set or loaded.
    pub fn fields(&self) -> &BTreeMap<String, Value> {
        &self.fields
    }

    /// Sets `field` and marks it dirty, to be written by the next
    /// [`save`](Self::save). Any JSON value: `p.set("n", 1)`,
    /// `p.set("s", "text")`, `p.set("o", serde_json::json!({"a": [1]}))`.
    pub fn set(&mut self, field: impl Into<String>, value: impl Into<Value>) {
        let field = field.into();
        self.dirty.insert(field.clone());
        self.fields.insert(field, value.into());
    }

    /// The fields set since the last save or load.
    pub fn dirty(&self) -> impl Iterator<Item = &str> {
        self.dirty.iter().map(String::as_str)
    }

    /// True when some field was set since the last save or load.
    pub fn is_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Writes the dirty fields (and only those), then marks them clean.
    /// With nothing dirty, sends nothing. While persisted, the save also
    /// restarts the ttl, so a new object expires like a touched one.
    pub async fn save(&mut self) -> Result<()> {
        if self.dirty.is_empty() {
            return Ok(());
        }
        let mut fields = Vec::with_capacity(self.dirty.len());
        for name in &self.dirty {
            let value = self.fields.get(name).unwrap_or(&Value::Null);
            let json = serde_json::to_string(value)
                .map_err(|e| Error::InvalidOptions(format!("field {name:?}: {e}")))?;
            fields.push(pb::ObjectField {
                name: name.clone(),
                json,
            });
        }
        self.client
            .save(pb::SaveObjectRequest {
                name: self.name.clone(),
                fields,
                ttl: self
                    .persisting
                    .as_ref()
                    .map(|p| busmq_proto::duration::to_proto(p.ttl)),
            })
            .await?;
        self.dirty.clear();
        Ok(())
    }

    /// Reads every field of the object from the bus and marks all fields
    /// clean. Fields the bus does not have keep their local value.
    pub async fn load(&mut self) -> Result<Loaded> {
        let reply = self
            .client
            .load(pb::LoadObjectRequest {
                name: self.name.clone(),
            })
            .await?
            .into_inner();
        for field in reply.fields {
            let value: Value = serde_json::from_str(&field.json)
                .map_err(|e| Error::Protocol(format!("field {:?} is not JSON: {e}", field.name)))?;
            self.fields.insert(field.name, value);
        }
        self.dirty.clear();
        Ok(Loaded {
            exists: reply.exists,
            id: reply.id,
        })
    }

    /// Keeps the object alive on the bus: touches it now (an error is
    /// returned, e.g. for a bad name) and then every third of `ttl` in the
    /// background, so it expires only `ttl` after the touching stops (see
    /// [`unpersist`](Self::unpersist)). Saves made meanwhile also set the
    /// ttl. `ttl` is in whole seconds (rounded up) and must not be zero.
    /// Touching an object not saved yet is harmless. Calling it again
    /// replaces the ttl.
    pub async fn persist(&mut self, ttl: Duration) -> Result<()> {
        if ttl.is_zero() {
            return Err(Error::InvalidOptions(
                "persist needs a ttl of at least one second".into(),
            ));
        }
        let wire_ttl = busmq_proto::duration::seconds_rounded_up(ttl);
        let ttl = Duration::from_secs(wire_ttl.seconds.unsigned_abs());
        let touch = pb::TouchObjectRequest {
            name: self.name.clone(),
            ttl: Some(wire_ttl),
        };
        self.client.touch(touch.clone()).await?;
        let mut client = self.client.clone();
        let period = ttl / 3;
        let toucher = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                if let Err(status) = client.touch(touch.clone()).await {
                    // Keep trying: the next touch may well get through
                    // before the ttl runs out.
                    tracing::warn!(object = %touch.name, %status, "touching a persisted object failed");
                }
            }
        })
        .abort_handle();
        self.persisting = Some(Persisting { ttl, toucher });
        Ok(())
    }

    /// Stops keeping the object alive: it expires once the ttl given to
    /// [`persist`](Self::persist) runs out after the last touch. Does
    /// nothing when not persisted.
    pub fn unpersist(&mut self) {
        self.persisting = None;
    }

    /// True while [`persist`](Self::persist) keeps the object alive.
    pub fn is_persisted(&self) -> bool {
        self.persisting.is_some()
    }
}
