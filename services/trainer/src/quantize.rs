//! quantize runs: the base's weights to int8 (`quark_ml::quantize`), no training and no
//! data. The model is a model.trained like any other: the gate measures it against the
//! champion (perplexity, answers, safety, latency) and the registry decides.

use crate::{MODEL_FILES, NAME, TrainerService, shape_of};
use quark_events::bus::HandlerError;
use quark_events::{Event, EventHeader, Id, ModelTrained, RunKind};
use quark_lineage::Model;
use quark_ml::checkpoint;
use std::collections::HashMap;
use std::time::Instant;
use tracing::info;

impl TrainerService {
    /// Quantizes `base` for `event` (or re-sends the model.trained of a job already done).
    pub(crate) async fn quantize(
        &self,
        event: &Event,
        base: Model,
    ) -> Result<ModelTrained, HandlerError> {
        let cause = event.header();
        let dir = self.work.join(cause.event_id.to_string());
        if let Some(done) = crate::recall(&dir)? {
            return Ok(done);
        }
        let _one_at_a_time = self.busy.lock().await;
        let started = Instant::now();
        let base_dir = self
            .store
            .get_dir(&base.checkpoint, &dir.join("base"))
            .await
            .map_err(HandlerError::transient)?;
        let out = dir.join("quantized");
        let (shape, bytes) = tokio::task::block_in_place(|| {
            let (mut model, tokenizer) =
                checkpoint::load(&base_dir, tch::Device::Cpu).map_err(HandlerError::permanent)?;
            let shape = shape_of(&model);
            quark_ml::quantize::quantize(&mut model).map_err(HandlerError::permanent)?;
            if out.exists() {
                std::fs::remove_dir_all(&out).map_err(HandlerError::transient)?;
            }
            let state = serde_json::json!({"quantized_from": base.model_id.to_string()});
            checkpoint::save(&out, &model, &tokenizer, None, &state)
                .map_err(HandlerError::transient)?;
            let size = |d: &std::path::Path| {
                let bytes = checkpoint::weights_bytes(d).map_err(HandlerError::transient)?;
                Ok::<_, HandlerError>(bytes as f64)
            };
            Ok::<_, HandlerError>((shape, (size(&base_dir)?, size(&out)?)))
        })?;
        let checkpoint = self
            .store
            .put_dir(&out, MODEL_FILES)
            .await
            .map_err(HandlerError::transient)?;
        let trained = ModelTrained {
            header: EventHeader::caused_by(cause, NAME, "model"),
            model_id: Id::derived(cause.event_id, "model"),
            run_kind: RunKind::Quantize,
            parent_model_id: Some(base.model_id),
            dataset_ids: base.dataset_ids.clone(),
            tokenizer_id: base.tokenizer_id,
            shape,
            hyperparameters: HashMap::from([(
                "method".to_string(),
                quark_ml::quantize::METHOD.to_string(),
            )]),
            checkpoint,
            metrics: HashMap::from([
                ("weights_bytes".to_string(), bytes.1),
                ("base_weights_bytes".to_string(), bytes.0),
                ("weights_smaller".to_string(), bytes.0 / bytes.1),
            ]),
            device: "cpu".into(),
            steps: 0,
            tokens: 0,
            duration_ms: started.elapsed().as_millis() as i64,
            adapter: None,
            choice: None,
        };
        crate::keep(&dir, &trained)?;
        info!(job = %dir.display(), model = %trained.model_id, base = %base.model_id, smaller = bytes.0 / bytes.1, "quantized");
        Ok(trained)
    }
}
