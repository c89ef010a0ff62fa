//! distill runs: a student with `trainer.distill.layer_share` of the base's layers, started
//! from the base's blocks, learns the base's next-token distribution on the newest
//! pre-training dataset (`quark_ml::distill`: forward KL to the teacher mixed with the
//! next-token loss). The student is a model.trained like any other: the gate measures it
//! against the champion and the registry decides.

use crate::data::Forgotten;
use crate::{Job, Run, TrainerService};
use quark_events::bus::HandlerError;
use quark_events::{DatasetPrepared, RunKind};
use quark_lineage::Model;
use quark_ml::align::Objective;
use quark_ml::checkpoint;
use quark_ml::distill::{DistillConfig, student_of};
use quark_ml::train::Trainer;
use std::path::Path;

impl TrainerService {
    /// The job that distils `base` on `dataset` in `dir`: a new student, or the one there
    /// resumed; the teacher is loaded again either way.
    pub(crate) async fn distill_job(
        &self,
        base: &Model,
        dataset: &DatasetPrepared,
        forgotten: &Forgotten,
        dir: &Path,
        run: &Run,
    ) -> Result<Job, HandlerError> {
        let base_dir = self
            .store
            .get_dir(&base.checkpoint, &dir.join("base"))
            .await
            .map_err(HandlerError::transient)?;
        let load = || checkpoint::load(&base_dir, run.device).map_err(HandlerError::permanent);
        let settings = &self.settings.distill;
        let trainer = run.trainer(|run_dir| {
            let (teacher, tokenizer) = load()?;
            let layers = settings.student_layers(teacher.config.n_layer);
            let student = student_of(&teacher, layers).map_err(HandlerError::permanent)?;
            let mut config = self.train_config(run.device, false, teacher.config.block_size);
            if settings.steps > 0 {
                config.max_steps = settings.steps;
                config.schedule.decay_steps = settings.steps;
                config.schedule.warmup_steps = config.schedule.warmup_steps.min(settings.steps / 2);
            }
            config.objective = Objective::Distill(DistillConfig {
                kl_share: settings.kl_share,
                temperature: settings.temperature,
            });
            Trainer::start(student, tokenizer, config, None, run_dir)
                .map_err(HandlerError::permanent)
        })?;
        let data = self.pretrain_data(dataset, &trainer, dir, forgotten)?;
        let (teacher, _) = load()?;
        Ok(Job {
            run_kind: RunKind::Distill,
            parent: Some(base.model_id),
            dataset_ids: vec![dataset.dataset_id],
            tokenizer_id: base.tokenizer_id,
            trainer: trainer.with_teacher(teacher),
            data,
            selector: None,
            readings: None,
        })
    }
}
