//! The gate: each metric of the candidate against its limit, absolute or relative to the
//! champion's.

use crate::suite::Measurement;
use quark_events::{GateCheck, GateRule};
use quark_runtime::config::EvaluateSettings;

/// The gate's verdict on one metric.
pub(crate) fn check(
    metric: &str,
    rule: GateRule,
    baseline: Option<f64>,
    candidate: f64,
    threshold: f64,
) -> GateCheck {
    let passed = match (rule, baseline) {
        (GateRule::MinValue, _) => candidate >= threshold,
        (GateRule::MaxValue, _) => candidate <= threshold,
        // Relative rules need a baseline: the first model has none to regress from.
        (_, None) => true,
        (GateRule::MaxRelativeIncrease, Some(b)) => candidate <= b * (1.0 + threshold) + 1e-12,
        (GateRule::MaxRelativeDecrease, Some(b)) => candidate >= b * (1.0 - threshold) - 1e-12,
    };
    GateCheck {
        metric: metric.to_string(),
        rule,
        baseline,
        candidate,
        threshold,
        passed,
    }
}

/// The champion's word-order gain on the corrections that caused the candidate.
pub(crate) const ORDER_GAIN: &str = "taught_order_gain";

/// Every check the gate makes, for the metrics the candidate has (and, for the word-order
/// gain of its corrections, the champion has).
pub fn gate(
    settings: &EvaluateSettings,
    candidate: &Measurement,
    baseline: Option<&Measurement>,
) -> Vec<GateCheck> {
    let rules: [(&str, GateRule, f64); 12] = [
        (
            "perplexity",
            GateRule::MaxRelativeIncrease,
            settings.max_perplexity_increase,
        ),
        (
            "learnt_loss",
            GateRule::MaxRelativeIncrease,
            settings.max_learnt_loss_increase,
        ),
        (
            "reply_loss",
            GateRule::MaxRelativeIncrease,
            settings.max_reply_loss_increase,
        ),
        (
            "exact_match",
            GateRule::MaxRelativeDecrease,
            settings.max_score_decrease,
        ),
        (
            "token_f1",
            GateRule::MaxRelativeDecrease,
            settings.max_score_decrease,
        ),
        (
            "rouge_l",
            GateRule::MaxRelativeDecrease,
            settings.max_score_decrease,
        ),
        (
            "feedback_avoided",
            GateRule::MaxRelativeDecrease,
            settings.max_score_decrease,
        ),
        (
            "safety_pass_rate",
            GateRule::MinValue,
            settings.min_safety_pass_rate,
        ),
        (
            "safety_pass_rate",
            GateRule::MaxRelativeDecrease,
            settings.max_safety_decrease,
        ),
        (
            "taught_exact_match",
            GateRule::MinValue,
            settings.min_taught_exact_match,
        ),
        (
            "latency_p95_ms",
            GateRule::MaxRelativeIncrease,
            settings.max_latency_increase,
        ),
        (
            crate::reward::WIN_RATE,
            GateRule::MinValue,
            settings.min_reward_win_rate,
        ),
    ];
    let mut checks: Vec<GateCheck> = rules
        .iter()
        .filter_map(|(metric, rule, threshold)| {
            let value = *candidate.metrics.get(*metric)?;
            let base = baseline.and_then(|b| b.metrics.get(*metric).copied());
            Some(check(metric, *rule, base, value, *threshold))
        })
        .collect();
    // Whether the corrections read as language is asked of the champion, which has not
    // learnt them: the candidate has, and finds any order it was taught likely.
    let order_gain = baseline.and_then(|b| b.metrics.get(ORDER_GAIN).copied());
    checks.extend(order_gain.map(|gain| {
        check(
            ORDER_GAIN,
            GateRule::MinValue,
            None,
            gain,
            settings.min_taught_order_gain,
        )
    }));
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured(pairs: &[(&str, f64)]) -> Measurement {
        Measurement {
            metrics: pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            samples: vec![],
        }
    }

    fn settings() -> EvaluateSettings {
        quark_runtime::Settings::default().evaluate
    }

    #[test]
    fn the_gate_holds_perplexity_within_two_percent_and_safety_within_five() {
        let base = measured(&[
            ("perplexity", 10.0),
            ("safety_pass_rate", 1.0),
            ("token_f1", 0.5),
        ]);
        let ok = measured(&[
            ("perplexity", 10.19),
            ("safety_pass_rate", 0.96),
            ("token_f1", 0.46),
        ]);
        assert!(gate(&settings(), &ok, Some(&base)).iter().all(|c| c.passed));

        let worse = measured(&[
            ("perplexity", 10.21),
            ("safety_pass_rate", 0.9),
            ("token_f1", 0.44),
        ]);
        let failed: Vec<_> = gate(&settings(), &worse, Some(&base))
            .into_iter()
            .filter(|c| !c.passed)
            .collect();
        let names: Vec<_> = failed.iter().map(|c| c.metric.as_str()).collect();
        assert_eq!(names, ["perplexity", "token_f1", "safety_pass_rate"]);
        assert_eq!(failed[0].baseline, Some(10.0));
        assert_eq!(failed[0].candidate, 10.21);
        assert_eq!(failed[0].threshold, 0.02);
    }

    #[test]
    fn a_first_model_is_held_only_to_absolute_rules() {
        let first = measured(&[("perplexity", 500.0), ("safety_pass_rate", 1.0)]);
        assert!(gate(&settings(), &first, None).iter().all(|c| c.passed));
        let unsafe_first = measured(&[("perplexity", 5.0), ("safety_pass_rate", 0.3)]);
        let checks = gate(&settings(), &unsafe_first, None);
        assert!(
            !checks
                .iter()
                .find(|c| c.metric == "safety_pass_rate")
                .unwrap()
                .passed
        );
    }

    #[test]
    fn a_candidate_that_learnt_too_few_corrections_is_rejected() {
        let base = measured(&[("taught_exact_match", 0.0), ("perplexity", 10.0)]);
        let learnt = measured(&[("taught_exact_match", 0.75), ("perplexity", 10.1)]);
        assert!(
            gate(&settings(), &learnt, Some(&base))
                .iter()
                .all(|c| c.passed)
        );
        let little = measured(&[("taught_exact_match", 0.5), ("perplexity", 10.0)]);
        let checks = gate(&settings(), &little, Some(&base));
        let failed: Vec<_> = checks.iter().filter(|c| !c.passed).collect();
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].metric, "taught_exact_match");
        // The champion's share is kept beside it: before and after.
        assert_eq!((failed[0].baseline, failed[0].candidate), (Some(0.0), 0.5));
    }

    #[test]
    fn a_candidate_the_reward_model_prefers_too_rarely_is_rejected() {
        let min = settings().min_reward_win_rate;
        let base = measured(&[("perplexity", 10.0)]);
        let verdict = |rate: f64| {
            let candidate = measured(&[("perplexity", 10.0), (crate::reward::WIN_RATE, rate)]);
            let checks = gate(&settings(), &candidate, Some(&base));
            let check = checks
                .iter()
                .find(|c| c.metric == crate::reward::WIN_RATE)
                .unwrap();
            assert_eq!((check.baseline, check.threshold), (None, min));
            checks.iter().all(|c| c.passed)
        };
        assert!(verdict(0.5) && verdict(min));
        assert!(!verdict(min - 0.05));
        // Without a reward model there is no win rate, and nothing to check.
        assert!(
            gate(&settings(), &base, Some(&base))
                .iter()
                .all(|c| c.metric != crate::reward::WIN_RATE)
        );
    }

    #[test]
    fn corrections_that_do_not_read_as_language_to_the_champion_are_rejected() {
        let learnt = |gain: f64| measured(&[("taught_exact_match", 1.0), (ORDER_GAIN, gain)]);
        let min = settings().min_taught_order_gain;
        let verdict = |champion: f64| {
            let checks = gate(&settings(), &learnt(5.0), Some(&learnt(champion)));
            let check = checks.into_iter().find(|c| c.metric == ORDER_GAIN).unwrap();
            // The champion's gain is the one checked; the candidate's (it learnt them) is not.
            assert_eq!((check.baseline, check.candidate), (None, champion));
            check.passed
        };
        assert!(verdict(min + 0.1));
        assert!(!verdict(min - 0.1));
        assert!(!verdict(0.0));
        // With no champion there is nothing it could have been taught against.
        assert!(
            gate(&settings(), &learnt(0.0), None)
                .iter()
                .all(|c| c.metric != ORDER_GAIN)
        );
    }
}
