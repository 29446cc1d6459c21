//! TEMPORARY until the local node implementations land: every node call is Unavailable.
use apid::node::*;
use async_trait::async_trait;
use basalt_api::machine::v1 as api;

pub struct Stub;

fn no<T>() -> Result<T, NodeError> {
    Err(NodeError::Unavailable("stub".into()))
}

#[async_trait]
impl Services for Stub {
    async fn list(&self) -> Result<Vec<api::ServiceInfo>, NodeError> {
        no()
    }
    async fn start(&self, _: &str) -> Result<String, NodeError> {
        no()
    }
    async fn stop(&self, _: &str) -> Result<String, NodeError> {
        no()
    }
    async fn restart(&self, _: &str) -> Result<String, NodeError> {
        no()
    }
    async fn logs(&self, _: &str, _: bool, _: Option<usize>) -> Result<ByteStream, NodeError> {
        no()
    }
}
#[async_trait]
impl Power for Stub {
    async fn reboot(&self, _: api::RebootMode) -> Result<(), NodeError> {
        no()
    }
    async fn shutdown(&self, _: bool) -> Result<(), NodeError> {
        no()
    }
    async fn reset(&self, _: ResetOptions) -> Result<(), NodeError> {
        no()
    }
}
#[async_trait]
impl System for Stub {
    async fn processes(&self) -> Result<Vec<api::Process>, NodeError> {
        no()
    }
    async fn memory(&self) -> Result<api::MemoryResult, NodeError> {
        no()
    }
    async fn mounts(&self) -> Result<Vec<api::Mount>, NodeError> {
        no()
    }
    async fn disks(&self) -> Result<Vec<api::Disk>, NodeError> {
        no()
    }
    async fn dmesg(&self, _: bool, _: Option<usize>) -> Result<ByteStream, NodeError> {
        no()
    }
}
#[async_trait]
impl Files for Stub {
    async fn read(&self, _: &str) -> Result<ByteStream, NodeError> {
        no()
    }
    async fn list(&self, _: &str, _: bool, _: u32) -> Result<FileStream, NodeError> {
        no()
    }
    fn roots(&self) -> Vec<std::path::PathBuf> {
        Vec::new()
    }
}
pub fn handles() -> NodeHandles {
    let s = std::sync::Arc::new(Stub);
    NodeHandles {
        services: s.clone(),
        power: s.clone(),
        system: s.clone(),
        files: s,
    }
}
