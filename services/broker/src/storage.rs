//! Tansu's storage as the embedded broker uses it: every call goes to the SQLite engine,
//! except two kinds.
//!
//! - Requests the engine cannot answer are refused here with a Kafka error code. Tansu 0.6's
//!   SQLite engine meets some inputs with a `todo` panic, which kills its storage task and
//!   leaves a broker that accepts connections and fails every request. InitProducerId below
//!   v3 (what aiokafka's idempotent producer sends) carries no producer id or epoch: that is
//!   a request for a new producer id, the same as -1/-1, and is passed on as one.
//! - Offsets of partitions and metadata of topics are answered from memory while they
//!   cannot have changed ([`Memo`]), so that idle consumers cost no SQLite queries.

use crate::memo::Memo;
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tansu_sans_io::{
    ConfigResource, ErrorCode, IsolationLevel, ListOffset, OpType, ScramMechanism,
    create_topics_request::CreatableTopic,
    delete_groups_response::DeletableGroupResult,
    delete_records_request::DeleteRecordsTopic,
    delete_records_response::{DeleteRecordsPartitionResult, DeleteRecordsTopicResult},
    describe_cluster_response::DescribeClusterBroker,
    describe_configs_response::DescribeConfigsResult,
    describe_topic_partitions_response::DescribeTopicPartitionsResponseTopic,
    incremental_alter_configs_request::AlterConfigsResource,
    incremental_alter_configs_response::AlterConfigsResourceResponse,
    list_groups_response::ListedGroup,
    record::deflated,
    txn_offset_commit_response::TxnOffsetCommitResponseTopic,
};
use tansu_storage::{
    BrokerRegistrationRequest, GroupDetail, ListOffsetResponse, MetadataResponse, NamedGroupDetail,
    OffsetCommitRequest, OffsetStage, ProducerIdResponse, Result, ScramCredential, Storage,
    TopicId, Topition, TxnAddPartitionsRequest, TxnAddPartitionsResponse, TxnOffsetCommitRequest,
    UpdateError, Version,
};
use tracing::warn;
use url::Url;
use uuid::Uuid;

#[derive(Clone, Debug)]
pub struct EmbeddedStorage<S> {
    inner: S,
    offsets: Arc<Memo<Topition, OffsetStage>>,
    topics: Arc<Memo<TopicId, MetadataResponse>>,
}

impl<S> EmbeddedStorage<S> {
    pub fn new(inner: S) -> Self {
        EmbeddedStorage {
            inner,
            offsets: Arc::default(),
            topics: Arc::default(),
        }
    }

    /// Topics were created or deleted, records deleted, a transaction ended or maintenance ran.
    fn forget_all(&self) {
        self.offsets.invalidate_all();
        self.topics.invalidate_all();
    }
}

/// The producer id and epoch to ask the engine for, or the error code to refuse with.
fn producer_request(
    transaction_id: Option<&str>,
    producer_id: Option<i64>,
    producer_epoch: Option<i16>,
) -> std::result::Result<(i64, i16), ErrorCode> {
    match (
        producer_id.unwrap_or(-1),
        producer_epoch.unwrap_or(-1),
        transaction_id,
    ) {
        (-1, -1, _) => Ok((-1, -1)),
        // An idempotent producer bumping its epoch (KIP-360): a new producer id serves it
        // as well, since its sequence numbers start again either way.
        (_, _, None) => Ok((-1, -1)),
        // Recovering a transactional producer: the engine has no path for it.
        (_, _, Some(_)) => Err(ErrorCode::InvalidTxnState),
    }
}

/// Every partition of `topics`, refused with `code`.
fn refused_deletes(
    topics: &[DeleteRecordsTopic],
    code: ErrorCode,
) -> Vec<DeleteRecordsTopicResult> {
    topics
        .iter()
        .map(|topic| {
            let partitions = topic
                .partitions
                .as_deref()
                .unwrap_or_default()
                .iter()
                .map(|p| {
                    DeleteRecordsPartitionResult::default()
                        .partition_index(p.partition_index)
                        .low_watermark(-1)
                        .error_code(code.into())
                })
                .collect();
            DeleteRecordsTopicResult::default()
                .name(topic.name.clone())
                .partitions(Some(partitions))
        })
        .collect()
}

#[async_trait]
impl<S: Storage> Storage for EmbeddedStorage<S> {
    async fn register_broker(&self, registration: BrokerRegistrationRequest) -> Result<()> {
        self.inner.register_broker(registration).await
    }

    async fn create_topic(&self, topic: CreatableTopic, validate_only: bool) -> Result<Uuid> {
        let created = self.inner.create_topic(topic, validate_only).await;
        self.forget_all();
        created
    }

    async fn incremental_alter_resource(
        &self,
        resource: AlterConfigsResource,
    ) -> Result<AlterConfigsResourceResponse> {
        let unsupported = resource
            .configs
            .as_deref()
            .unwrap_or_default()
            .iter()
            .any(|c| {
                matches!(
                    OpType::try_from(c.config_operation),
                    Ok(OpType::Append | OpType::Subtract)
                )
            });
        if unsupported {
            warn!(resource = %resource.resource_name, "refused: APPEND and SUBTRACT config operations");
            return Ok(AlterConfigsResourceResponse::default()
                .error_code(ErrorCode::InvalidRequest.into())
                .error_message(Some("APPEND and SUBTRACT are not supported".into()))
                .resource_type(resource.resource_type)
                .resource_name(resource.resource_name));
        }
        self.inner.incremental_alter_resource(resource).await
    }

    async fn delete_records(
        &self,
        topics: &[DeleteRecordsTopic],
    ) -> Result<Vec<DeleteRecordsTopicResult>> {
        warn!("refused: DeleteRecords is not supported by the SQLite engine");
        Ok(refused_deletes(topics, ErrorCode::PolicyViolation))
    }

    async fn delete_topic(&self, topic: &TopicId) -> Result<ErrorCode> {
        let deleted = self.inner.delete_topic(topic).await;
        self.forget_all();
        deleted
    }

    async fn brokers(&self) -> Result<Vec<DescribeClusterBroker>> {
        self.inner.brokers().await
    }

    async fn produce(
        &self,
        transaction_id: Option<&str>,
        topition: &Topition,
        batch: deflated::Batch,
    ) -> Result<i64> {
        let produced = self.inner.produce(transaction_id, topition, batch).await;
        self.offsets.invalidate(topition);
        produced
    }

    async fn fetch(
        &self,
        topition: &'_ Topition,
        offset: i64,
        min_bytes: u32,
        max_bytes: u32,
        isolation: IsolationLevel,
    ) -> Result<Vec<deflated::Batch>> {
        // Past the high watermark there is nothing to read.
        if self
            .offsets
            .get(topition)
            .is_some_and(|stage| offset >= stage.high_watermark())
        {
            return Ok(Vec::new());
        }
        self.inner
            .fetch(topition, offset, min_bytes, max_bytes, isolation)
            .await
    }

    async fn offset_stage(&self, topition: &Topition) -> Result<OffsetStage> {
        self.offsets
            .get_or(topition, self.inner.offset_stage(topition))
            .await
    }

    async fn list_offsets(
        &self,
        isolation_level: IsolationLevel,
        offsets: &[(Topition, ListOffset)],
    ) -> Result<Vec<(Topition, ListOffsetResponse)>> {
        self.inner.list_offsets(isolation_level, offsets).await
    }

    async fn offset_commit(
        &self,
        group_id: &str,
        retention_time_ms: Option<Duration>,
        offsets: &[(Topition, OffsetCommitRequest)],
    ) -> Result<Vec<(Topition, ErrorCode)>> {
        self.inner
            .offset_commit(group_id, retention_time_ms, offsets)
            .await
    }

    async fn offset_fetch(
        &self,
        group_id: Option<&str>,
        topics: &[Topition],
        require_stable: Option<bool>,
    ) -> Result<BTreeMap<Topition, i64>> {
        self.inner
            .offset_fetch(group_id, topics, require_stable)
            .await
    }

    async fn committed_offset_topitions(&self, group_id: &str) -> Result<BTreeMap<Topition, i64>> {
        self.inner.committed_offset_topitions(group_id).await
    }

    async fn metadata(&self, topics: Option<&[TopicId]>) -> Result<MetadataResponse> {
        match topics {
            // What every fetch asks, once per topic in it.
            Some([topic]) => self.topics.get_or(topic, self.inner.metadata(topics)).await,
            _ => self.inner.metadata(topics).await,
        }
    }

    async fn upsert_user_scram_credential(
        &self,
        user: &str,
        mechanism: ScramMechanism,
        credential: ScramCredential,
    ) -> Result<()> {
        self.inner
            .upsert_user_scram_credential(user, mechanism, credential)
            .await
    }

    async fn delete_user_scram_credential(
        &self,
        user: &str,
        mechanism: ScramMechanism,
    ) -> Result<()> {
        self.inner
            .delete_user_scram_credential(user, mechanism)
            .await
    }

    async fn user_scram_credential(
        &self,
        user: &str,
        mechanism: ScramMechanism,
    ) -> Result<Option<ScramCredential>> {
        self.inner.user_scram_credential(user, mechanism).await
    }

    async fn describe_config(
        &self,
        name: &str,
        resource: ConfigResource,
        keys: Option<&[String]>,
    ) -> Result<DescribeConfigsResult> {
        self.inner.describe_config(name, resource, keys).await
    }

    async fn list_groups(&self, states_filter: Option<&[String]>) -> Result<Vec<ListedGroup>> {
        self.inner.list_groups(states_filter).await
    }

    async fn delete_groups(
        &self,
        group_ids: Option<&[String]>,
    ) -> Result<Vec<DeletableGroupResult>> {
        self.inner.delete_groups(group_ids).await
    }

    async fn describe_groups(
        &self,
        group_ids: Option<&[String]>,
        include_authorized_operations: bool,
    ) -> Result<Vec<NamedGroupDetail>> {
        self.inner
            .describe_groups(group_ids, include_authorized_operations)
            .await
    }

    async fn describe_topic_partitions(
        &self,
        topics: Option<&[TopicId]>,
        partition_limit: i32,
        cursor: Option<Topition>,
    ) -> Result<Vec<DescribeTopicPartitionsResponseTopic>> {
        self.inner
            .describe_topic_partitions(topics, partition_limit, cursor)
            .await
    }

    async fn update_group(
        &self,
        group_id: &str,
        detail: GroupDetail,
        version: Option<Version>,
    ) -> Result<Version, UpdateError<GroupDetail>> {
        self.inner.update_group(group_id, detail, version).await
    }

    async fn init_producer(
        &self,
        transaction_id: Option<&str>,
        transaction_timeout_ms: i32,
        producer_id: Option<i64>,
        producer_epoch: Option<i16>,
    ) -> Result<ProducerIdResponse> {
        match producer_request(transaction_id, producer_id, producer_epoch) {
            Ok((id, epoch)) => {
                self.inner
                    .init_producer(
                        transaction_id,
                        transaction_timeout_ms,
                        Some(id),
                        Some(epoch),
                    )
                    .await
            }
            Err(error) => {
                warn!(
                    ?transaction_id,
                    ?producer_id,
                    ?producer_epoch,
                    "refused: InitProducerId"
                );
                Ok(ProducerIdResponse {
                    error,
                    id: -1,
                    epoch: -1,
                })
            }
        }
    }

    async fn txn_add_offsets(
        &self,
        transaction_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        group_id: &str,
    ) -> Result<ErrorCode> {
        self.inner
            .txn_add_offsets(transaction_id, producer_id, producer_epoch, group_id)
            .await
    }

    async fn txn_add_partitions(
        &self,
        partitions: TxnAddPartitionsRequest,
    ) -> Result<TxnAddPartitionsResponse> {
        match partitions {
            TxnAddPartitionsRequest::VersionFourPlus { .. } => {
                warn!("refused: AddPartitionsToTxn v4 and later");
                Err(tansu_storage::Error::Api(ErrorCode::UnsupportedVersion))
            }
            v0_to_v3 => self.inner.txn_add_partitions(v0_to_v3).await,
        }
    }

    async fn txn_offset_commit(
        &self,
        offsets: TxnOffsetCommitRequest,
    ) -> Result<Vec<TxnOffsetCommitResponseTopic>> {
        self.inner.txn_offset_commit(offsets).await
    }

    async fn txn_end(
        &self,
        transaction_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        committed: bool,
    ) -> Result<ErrorCode> {
        let ended = self
            .inner
            .txn_end(transaction_id, producer_id, producer_epoch, committed)
            .await;
        self.forget_all();
        ended
    }

    async fn maintain(&self, now: SystemTime) -> Result<()> {
        let maintained = self.inner.maintain(now).await;
        self.forget_all();
        maintained
    }

    async fn cluster_id(&self) -> Result<String> {
        self.inner.cluster_id().await
    }

    async fn node(&self) -> Result<i32> {
        self.inner.node().await
    }

    async fn advertised_listener(&self) -> Result<Url> {
        self.inner.advertised_listener().await
    }

    async fn ping(&self) -> Result<()> {
        self.inner.ping().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_producer_id_below_v3_asks_for_a_new_producer() {
        assert_eq!(producer_request(None, None, None), Ok((-1, -1)));
        assert_eq!(producer_request(Some("t"), None, None), Ok((-1, -1)));
        assert_eq!(producer_request(None, Some(-1), Some(-1)), Ok((-1, -1)));
        assert_eq!(producer_request(None, Some(7), Some(2)), Ok((-1, -1)));
        assert_eq!(
            producer_request(Some("t"), Some(7), Some(2)),
            Err(ErrorCode::InvalidTxnState)
        );
    }
}
