//! The `busmq.v1.Objects` gRPC service: persistable objects, stored as
//! field to JSON text. Every value is checked to be JSON here, at the edge,
//! so a load always returns JSON.

use std::sync::Arc;

use busmq_core::{Error, Limits, ObjectName};
use busmq_proto::to_status;
use busmq_proto::v1::{self, objects_server::Objects};
use busmq_storage::Storage;
use tonic::{Request, Response, Status};

use crate::queues::ttl;

/// The object service of one broker.
pub struct ObjectsService {
    storage: Arc<dyn Storage>,
    limits: Limits,
}

impl ObjectsService {
    /// A service over `storage`, enforcing `limits`.
    pub fn new(storage: Arc<dyn Storage>, limits: Limits) -> Self {
        ObjectsService { storage, limits }
    }

    fn object(&self, name: &str) -> Result<ObjectName, Status> {
        busmq_server::telemetry::record_object(name);
        ObjectName::parse(name, &self.limits).map_err(to_status)
    }
}

/// An object ttl: zero would expire the object at once, never what a
/// caller means.
#[tonic::async_trait]
impl Objects for ObjectsService {
    async fn save(
        &self,
        request: Request<v1::SaveObjectRequest>,
    ) -> Result<Response<v1::SaveObjectResponse>, Status> {
        let req = request.into_inner();
        let object = self.object(&req.name)?;
        let fields: Vec<(String, String)> =
            req.fields.into_iter().map(|f| (f.name, f.json)).collect();
        busmq_core::object::check_fields(&object, &fields, &self.limits).map_err(to_status)?;
        let ttl = req.ttl.as_ref().map(ttl).transpose()?;
        self.storage
            .object_save(&object, fields, ttl)
            .await
            .map_err(to_status)?;
        Ok(Response::new(v1::SaveObjectResponse {}))
    }

    async fn load(
        &self,
        request: Request<v1::LoadObjectRequest>,
    ) -> Result<Response<v1::LoadObjectResponse>, Status> {
        let object = self.object(&request.into_inner().name)?;
        let fields = self.storage.object_load(&object).await.map_err(to_status)?;
        Ok(Response::new(v1::LoadObjectResponse {
            exists: fields.is_some(),
            id: object.to_string(),
            fields: fields
                .unwrap_or_default()
                .into_iter()
                .map(|(name, json)| v1::ObjectField { name, json })
                .collect(),
        }))
    }

    async fn touch(
        &self,
        request: Request<v1::TouchObjectRequest>,
    ) -> Result<Response<v1::TouchObjectResponse>, Status> {
        let req = request.into_inner();
        let object = self.object(&req.name)?;
        let Some(wire_ttl) = &req.ttl else {
            return Err(to_status(Error::InvalidArgument(
                "a touch needs a ttl".into(),
            )));
        };
        let ttl = ttl(wire_ttl)?;
        let exists = self
            .storage
            .object_touch(&object, ttl)
            .await
            .map_err(to_status)?;
        Ok(Response::new(v1::TouchObjectResponse { exists }))
    }
}
