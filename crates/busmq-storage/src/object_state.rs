//! Persistable objects of the stores that keep their live state in this
//! process (memory and embedded): named maps of field to JSON text, each
//! with an optional expiry deadline.
//!
//! Like queues, every change runs under one lock and is handed to the
//! store's [`Journal`] as [`Change`]s while the lock is held. An expired
//! object is gone for every reader at once (each access checks the
//! deadline) and is removed from memory and journal by a timer.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::time::Instant;

use crate::queue_store::{Change, Journal, QueueStore, Recorder, Shared, deadline};
use crate::{Error, ObjectFields, ObjectName, Result};

/// One persistable object.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StoredObject {
    pub(crate) fields: ObjectFields,
    /// `None`: never expires.
    pub(crate) expires_at: Option<Instant>,
    /// A removal timer is armed (it re-arms itself if the deadline moved).
    pub(crate) timer: bool,
}

impl StoredObject {
    fn expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

/// The live objects of a store.
pub type Objects = HashMap<ObjectName, StoredObject>;

/// The one rule every store applies to a save itself: at least one field
/// (the rest is checked at the gRPC edges, see
/// [`busmq_core::object::check_fields`]).
pub fn require_fields(object: &ObjectName, fields: &[(String, String)]) -> Result<()> {
    if fields.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "saving object {object} needs at least one field"
        )));
    }
    Ok(())
}

impl<J: Journal> QueueStore<J> {
    /// Drops `object` if its deadline passed, recording it; returns the
    /// live object.
    fn live<'a>(
        objects: &'a mut Objects,
        object: &ObjectName,
        now: Instant,
        rec: &mut Recorder,
    ) -> Option<&'a mut StoredObject> {
        if objects.get(object).is_some_and(|o| o.expired(now)) {
            objects.remove(object);
            rec.record(|| Change::ObjectDrop(object.clone()));
        }
        objects.get_mut(object)
    }

    pub(crate) async fn save_object(
        &self,
        object: &ObjectName,
        fields: Vec<(String, String)>,
        ttl: Option<Duration>,
    ) -> Result<()> {
        require_fields(object, &fields)?;
        let now = Instant::now();
        let mut rec = Recorder::new(J::RECORDS);
        let (ticket, arm) = {
            let mut objects = self.objects();
            if Self::live(&mut objects, object, now, &mut rec).is_none() {
                objects.insert(object.clone(), StoredObject::default());
            }
            let o = objects.get_mut(object).expect("inserted above");
            if rec.on {
                rec.changes.push(Change::ObjectFields {
                    object: object.clone(),
                    fields: fields.clone(),
                });
            }
            o.fields.extend(fields);
            let arm = ttl.map(|ttl| Self::set_expiry(object, o, deadline(now, ttl), &mut rec));
            (self.submit(rec), arm.flatten())
        };
        self.shared.journal.wait(ticket).await?;
        if let Some(at) = arm {
            self.schedule_object_expiry(object.clone(), at);
        }
        Ok(())
    }

    pub(crate) async fn load_object(&self, object: &ObjectName) -> Result<Option<ObjectFields>> {
        let now = Instant::now();
        let mut rec = Recorder::new(J::RECORDS);
        let (fields, ticket) = {
            let mut objects = self.objects();
            let fields = Self::live(&mut objects, object, now, &mut rec).map(|o| o.fields.clone());
            (fields, self.submit(rec))
        };
        // Whatever was read must be durable before it is reported.
        self.shared.journal.wait(ticket).await?;
        Ok(fields)
    }

    pub(crate) async fn touch_object(&self, object: &ObjectName, ttl: Duration) -> Result<bool> {
        let now = Instant::now();
        let mut rec = Recorder::new(J::RECORDS);
        let (found, arm, ticket) = {
            let mut objects = self.objects();
            match Self::live(&mut objects, object, now, &mut rec) {
                Some(o) => {
                    let arm = Self::set_expiry(object, o, deadline(now, ttl), &mut rec);
                    (true, arm, self.submit(rec))
                }
                None => (false, None, self.submit(rec)),
            }
        };
        self.shared.journal.wait(ticket).await?;
        if let Some(at) = arm {
            self.schedule_object_expiry(object.clone(), at);
        }
        Ok(found)
    }

    /// Sets the deadline of `o`; the instant to arm a timer for, when none
    /// is armed.
    fn set_expiry(
        object: &ObjectName,
        o: &mut StoredObject,
        at: Instant,
        rec: &mut Recorder,
    ) -> Option<Instant> {
        o.expires_at = Some(at);
        rec.record(|| Change::ObjectExpiry {
            object: object.clone(),
            expires_at: Some(at),
        });
        if o.timer {
            return None;
        }
        o.timer = true;
        Some(at)
    }

    /// Removes `object` once its deadline passes. One timer per object: when
    /// it fires early (the object was touched since), it re-arms for the
    /// current deadline. The timer does not keep the store alive.
    pub(crate) fn schedule_object_expiry(&self, object: ObjectName, at: Instant) {
        let weak: Weak<Shared<J>> = Arc::downgrade(&self.shared);
        tokio::spawn(async move {
            let mut at = at;
            loop {
                tokio::time::sleep_until(at).await;
                let Some(shared) = weak.upgrade() else {
                    return;
                };
                let this = QueueStore { shared };
                let now = Instant::now();
                let mut rec = Recorder::new(J::RECORDS);
                let ticket = {
                    let mut objects = this.objects();
                    let Some(o) = objects.get_mut(&object) else {
                        return;
                    };
                    match o.expires_at {
                        Some(next) if next > now => {
                            at = next;
                            continue;
                        }
                        Some(_) => {
                            objects.remove(&object);
                            rec.record(|| Change::ObjectDrop(object.clone()));
                            this.submit(rec)
                        }
                        None => {
                            o.timer = false;
                            return;
                        }
                    }
                };
                if let Err(e) = this.shared.journal.wait(ticket).await {
                    tracing::warn!(object = %object, "recording the expiry failed: {e}");
                }
                tracing::debug!(object = %object, "object expired");
                return;
            }
        });
    }
}
