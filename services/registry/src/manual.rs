//! Alias moves asked for by hand (promotion.requested, from `quark promote`, `quark rollback`
//! or the dashboard): a model to champion or to a named alias, or the champion rolled back to
//! the previous one. The moves carry who asked and why, so `quark models --at` explains them.

use crate::decide::{carry_model, champion_moves, moved};
use crate::{alias_of, aliases, model};
use quark_events::{Alias, ModelPromoted, PromotionAction, PromotionReason, PromotionRequested};
use sea_orm::{ConnectionTrait, DbErr};

/// Names the registry keeps for itself (`quark` names the champion at the gateway).
const TAKEN: [&str; 5] = ["champion", "challenger", "previous", "named", "quark"];

/// The moves `request` calls for, or why it cannot be carried out.
pub async fn requested<C: ConnectionTrait>(
    db: &C,
    request: &PromotionRequested,
) -> Result<Result<Vec<ModelPromoted>, String>, DbErr> {
    let champion = alias_of(db, Alias::Champion).await?;
    let cause = &request.header;
    let moves = match (request.action, request.model_id, &request.alias_name) {
        (PromotionAction::Rollback, _, _) => match alias_of(db, Alias::Previous).await? {
            None => {
                return Ok(Err(
                    "nothing to roll back to: there is no previous champion".into(),
                ));
            }
            Some(previous) => {
                champion_moves(db, cause, previous, PromotionReason::Rollback, champion).await?
            }
        },
        (PromotionAction::Promote, None, _) => {
            return Ok(Err("a promotion names the model to promote".into()));
        }
        (PromotionAction::Promote, Some(model_id), alias_name) => {
            match model(db, model_id).await? {
                None => return Ok(Err(format!("the registry knows no model {model_id}"))),
                Some(m) if !m.run_kind.is_generative() => {
                    return Ok(Err(format!(
                        "model {model_id} is a reward model: it scores answers and cannot serve them"
                    )));
                }
                Some(_) => {}
            }
            match alias_name {
                None if champion == Some(model_id) => {
                    return Ok(Err(format!("model {model_id} is the champion already")));
                }
                None => {
                    champion_moves(db, cause, model_id, PromotionReason::Manual, champion).await?
                }
                Some(name) if TAKEN.contains(&name.as_str()) || !valid_name(name) => {
                    return Ok(Err(format!(
                        "an alias name is 1-64 letters, digits, '-', '_' or '.', and not {}",
                        TAKEN.join(", ")
                    )));
                }
                Some(name) => vec![named(db, request, model_id, name).await?],
            }
        }
    };
    Ok(Ok(moves
        .into_iter()
        .map(|mut p| {
            (p.operator, p.note) = (Some(request.operator.clone()), request.reason.clone());
            p
        })
        .collect()))
}

/// The move of named alias `name` to `model_id`.
async fn named<C: ConnectionTrait>(
    db: &C,
    request: &PromotionRequested,
    model_id: quark_events::Id,
    name: &str,
) -> Result<ModelPromoted, DbErr> {
    let previous = aliases(db)
        .await?
        .into_iter()
        .find_map(|(alias, id)| (alias == name).then_some(id));
    let mut p = moved(
        db,
        &request.header,
        Alias::Named,
        model_id,
        PromotionReason::Manual,
    )
    .await?;
    (p.previous_model_id, p.alias_name) = (previous, Some(name.to_string()));
    carry_model(db, p).await
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}
