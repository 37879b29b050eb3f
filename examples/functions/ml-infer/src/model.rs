//! The model: a two-layer network (8 inputs, 6 tanh units, a logistic output) whose
//! weights are compiled into the component, so inference needs no file and no network.

pub const NAME: &str = "risk-mlp-8x6";

const INPUTS: usize = 8;
const HIDDEN: usize = 6;

const HIDDEN_WEIGHTS: [[f64; INPUTS]; HIDDEN] = [
    [0.42, -0.17, 0.08, 0.31, -0.25, 0.12, 0.05, -0.09],
    [-0.33, 0.27, 0.19, -0.04, 0.15, -0.21, 0.36, 0.02],
    [0.11, 0.09, -0.38, 0.22, 0.07, 0.29, -0.13, 0.18],
    [0.26, -0.31, 0.14, -0.19, 0.34, 0.03, 0.21, -0.27],
    [-0.08, 0.23, 0.32, 0.16, -0.29, -0.11, 0.04, 0.37],
    [0.19, 0.06, -0.22, 0.39, 0.13, -0.35, -0.07, 0.24],
];
const HIDDEN_BIAS: [f64; HIDDEN] = [0.05, -0.12, 0.08, 0.0, -0.03, 0.1];
const OUTPUT_WEIGHTS: [f64; HIDDEN] = [0.91, -0.64, 0.47, 0.82, -0.38, 0.59];
const OUTPUT_BIAS: f64 = -0.2;

/// The model's score in (0, 1) for up to eight features; missing ones count as zero.
pub fn predict(features: &[f64]) -> Result<f64, String> {
    if features.is_empty() || features.len() > INPUTS {
        return Err(format!(
            "give from 1 to {INPUTS} features, not {}",
            features.len()
        ));
    }
    if let Some(position) = features.iter().position(|f| !f.is_finite()) {
        return Err(format!("feature {position} is not a finite number"));
    }
    let mut input = [0.0; INPUTS];
    input[..features.len()].copy_from_slice(features);
    let mut logit = OUTPUT_BIAS;
    for ((weights, bias), out_weight) in HIDDEN_WEIGHTS.iter().zip(HIDDEN_BIAS).zip(OUTPUT_WEIGHTS)
    {
        let activation: f64 = weights.iter().zip(&input).map(|(w, x)| w * x).sum::<f64>() + bias;
        logit += out_weight * activation.tanh();
    }
    let score = 1.0 / (1.0 + (-logit).exp());
    // Six decimals: stable across platforms' last-bit rounding and easy to read.
    Ok((score * 1e6).round() / 1e6)
}
