//! Properties of the transformer that hold for any weights: causality, KV-cache equivalence,
//! that each stability switch changes the computation, dropout at eval, and the probes.

mod common;

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};
use chameleon_model::checkpoint::load_hf_checkpoint;
use chameleon_model::{Chameleon, ChameleonConfig, KvCache, NormPlacement, log_sum_exp};
use common::{fixture, golden, max_abs_diff};

fn small(placement: NormPlacement, qk_norm: bool, device: &Device) -> Chameleon {
    device.seed(7);
    ChameleonConfig::new(64, 32, 2, 4)
        .with_n_kv_heads(Some(2))
        .with_ffn_multiple_of(16)
        .with_norm_placement(placement)
        .with_qk_norm(qk_norm)
        .with_init_std(0.2)
        .init(device)
}

fn tokens(rows: Vec<Vec<i64>>, device: &Device) -> Tensor<2, Int> {
    let (b, t) = (rows.len(), rows[0].len());
    Tensor::from_data(TensorData::new(rows.concat(), [b, t]), device)
}

#[test]
fn a_future_token_never_changes_a_past_logit() {
    let device = Device::flex();
    for placement in [NormPlacement::PreNorm, NormPlacement::Reordered] {
        let model = small(placement, true, &device);
        let a = tokens(vec![vec![1, 5, 9, 13, 17, 21, 25, 29]], &device);
        let b = tokens(vec![vec![1, 5, 9, 13, 60, 2, 3, 4]], &device);
        let (la, lb) = (model.forward(a), model.forward(b));
        let past = max_abs_diff(la.clone().narrow(1, 0, 4), lb.clone().narrow(1, 0, 4));
        assert!(past < 1e-6, "{placement:?}: past logits moved by {past}");
        let future = max_abs_diff(la.narrow(1, 4, 4), lb.narrow(1, 4, 4));
        assert!(future > 1e-3, "{placement:?}: changed tokens should change their own logits");
    }
}

#[test]
fn packed_documents_never_see_each_other() {
    let device = Device::flex();
    for placement in [NormPlacement::PreNorm, NormPlacement::Reordered] {
        let model = small(placement, true, &device);
        let first = [1i64, 5, 9, 13, 17];
        let second = [1i64, 40, 41, 42];
        let row = |head: [i64; 5]| tokens(vec![[head.as_slice(), second.as_slice()].concat()], &device);
        let documents = tokens(vec![vec![0, 0, 0, 0, 0, 1, 1, 1, 1]], &device);
        let (packed, probes) = model.forward_packed(row(first), Some(documents.clone()), true);
        assert!(probes.is_some());
        // Another first document leaves the second one's logits as they were ...
        let (other, _) = model.forward_packed(row([1, 60, 61, 62, 63]), Some(documents), false);
        let moved = max_abs_diff(packed.clone().narrow(1, 5, 4), other.narrow(1, 5, 4));
        assert!(moved < 1e-5, "{placement:?}: the second document moved by {moved}");
        // ... equal to the second document alone at position 0 (RoPE is relative) ...
        let alone = model.forward(tokens(vec![second.to_vec()], &device));
        let diff = max_abs_diff(packed.clone().narrow(1, 5, 4), alone);
        assert!(diff < 1e-4, "{placement:?}: packed and alone differ by {diff}");
        // ... whereas without document ids the first document is seen.
        let seen = max_abs_diff(
            model.forward(row(first)).narrow(1, 5, 4),
            model.forward(row([1, 60, 61, 62, 63])).narrow(1, 5, 4),
        );
        assert!(seen > 1e-3, "{placement:?}: plain causal attention should see the first document");
    }
}

#[test]
fn decoding_token_by_token_equals_one_full_forward() {
    let device = Device::flex();
    let hf = load_hf_checkpoint(&fixture("prenorm_gqa8to2_bf16"), &device).unwrap().model;
    let (ids, _) = golden("prenorm_gqa8to2_bf16", &device);
    let models = [hf, small(NormPlacement::Reordered, true, &device), small(NormPlacement::PreNorm, false, &device)];
    for model in models {
        let ids = ids.clone().clamp(0, model.config.vocab_size as i64 - 1);
        let [_, t] = ids.dims();
        let full = model.forward(ids.clone());
        let mut cache = KvCache::new(&model);
        // A 3-token prompt, then one token at a time.
        let mut steps = vec![model.forward_cached(ids.clone().narrow(1, 0, 3), &mut cache)];
        for i in 3..t {
            steps.push(model.forward_cached(ids.clone().narrow(1, i, 1), &mut cache));
        }
        assert_eq!(cache.len(), t);
        let diff = max_abs_diff(Tensor::cat(steps, 1), full);
        assert!(diff < 1e-4, "cached decoding differs from the full pass by {diff}");
    }
}

#[test]
fn each_switch_changes_the_computation() {
    let device = Device::flex();
    let ids = tokens(vec![vec![3, 1, 4, 1, 5, 9, 2, 6]], &device);
    let base = small(NormPlacement::PreNorm, true, &device);
    let reference = base.forward(ids.clone());

    // Same weights, QK-norm removed.
    let mut no_qk = base.clone();
    for layer in &mut no_qk.layers {
        layer.self_attn.q_norm = None;
        layer.self_attn.k_norm = None;
    }
    assert!(max_abs_diff(no_qk.forward(ids.clone()), reference.clone()) > 1e-3);

    // Same weights, reordered norm.
    let mut reordered = base.clone();
    for layer in &mut reordered.layers {
        layer.norm_placement = NormPlacement::Reordered;
    }
    assert!(max_abs_diff(reordered.forward(ids.clone()), reference.clone()) > 1e-3);

    // The per-head affine of QK-norm is really per head: perturbing head 1's gain of the
    // first layer's q_norm changes the output.
    let mut affine = base.clone();
    let q_norm = affine.layers[0].self_attn.q_norm.as_mut().unwrap();
    let w = q_norm.weight.val();
    let bump = Tensor::<2>::zeros(w.dims(), &device).slice_fill([1..2, 0..8], 0.5);
    q_norm.weight = burn::module::Param::from_tensor(w + bump);
    assert!(max_abs_diff(affine.forward(ids), reference) > 1e-4);
}

#[test]
fn dropout_is_a_no_op_at_eval_and_active_in_training() {
    let train = Device::flex().autodiff();
    train.seed(3);
    let config = ChameleonConfig::new(64, 32, 2, 4)
        .with_ffn_multiple_of(16)
        .with_residual_dropout(0.5)
        .with_attention_dropout(0.5);
    let model = config.init(&train);
    let mut plain = model.clone();
    for layer in &mut plain.layers {
        layer.resid_dropout.prob = 0.0;
        layer.self_attn.attn_dropout.prob = 0.0;
    }
    let ids = tokens(vec![vec![3, 1, 4, 1, 5, 9]], &train);
    // Training device: dropout changes the output.
    let diff = max_abs_diff(model.forward(ids.clone()).detach(), plain.forward(ids.clone()).detach());
    assert!(diff > 1e-3, "dropout had no effect in training ({diff})");
    // Eval device (no autodiff): identical to the same weights without dropout.
    let (model, plain) = (model.valid(), plain.valid());
    let ids = tokens(vec![vec![3, 1, 4, 1, 5, 9]], &Device::flex());
    assert_eq!(max_abs_diff(model.forward(ids.clone()), plain.forward(ids)), 0.0);
}

#[test]
fn probes_measure_what_they_claim() {
    let device = Device::flex();
    let model = small(NormPlacement::PreNorm, false, &device);
    let ids = tokens(vec![vec![3, 1, 4, 1, 5, 9, 2, 6], vec![2, 7, 1, 8, 2, 8, 1, 8]], &device);
    let (logits, d) = model.forward_diagnosed(ids.clone());
    assert_eq!(d.max_attn_logit.dims(), [2]);
    assert_eq!(d.output_rms.dims(), [2]);
    assert_eq!(d.attn_entropy.dims(), [2]);

    // log Z against a direct host-side logsumexp.
    let values: Vec<f32> = logits.clone().into_data().try_to_vec().unwrap();
    let vocab = model.config.vocab_size;
    let host: Vec<f32> = values
        .chunks(vocab)
        .map(|row| {
            let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            m + row.iter().map(|x| (x - m).exp()).sum::<f32>().ln()
        })
        .collect();
    let log_z: Vec<f32> = d.log_z.clone().into_data().try_to_vec().unwrap();
    for (a, b) in log_z.iter().zip(&host) {
        assert!((a - b).abs() < 1e-4, "log Z {a} vs {b}");
    }
    assert_eq!(max_abs_diff(log_sum_exp(logits), d.log_z), 0.0);

    // Without QK-norm the first layer's logits are linear in W_q: doubling W_q doubles its max
    // attention logit (positive here) and leaves nothing before it changed.
    let mut doubled = model.clone();
    let q = &mut doubled.layers[0].self_attn.q_proj;
    q.weight = burn::module::Param::from_tensor(q.weight.val() * 2.0);
    let (_, d2) = doubled.forward_diagnosed(ids.clone());
    let (m1, m2): (f32, f32) =
        (d.max_attn_logit.clone().narrow(0, 0, 1).into_scalar(), d2.max_attn_logit.narrow(0, 0, 1).into_scalar());
    assert!(m1 > 0.0);
    assert!((m2 - 2.0 * m1).abs() < 1e-4 * m1.abs().max(1.0), "{m2} != 2 * {m1}");

    // Output RMS: with zero output projections a pre-norm layer passes its input through, so
    // the probe must read the RMS of the token embeddings, computed here on the host.
    let mut one = model.clone();
    one.layers.truncate(1);
    let zero = |l: &mut burn::nn::Linear| l.weight = burn::module::Param::from_tensor(l.weight.val().zeros_like());
    zero(&mut one.layers[0].self_attn.o_proj);
    zero(&mut one.layers[0].mlp.down_proj);
    let (_, d1) = one.forward_diagnosed(ids.clone());
    let rms: f32 = d1.output_rms.into_scalar();
    let emb: Vec<f32> = one.embed_tokens.forward(ids).into_data().try_to_vec().unwrap();
    let host = (emb.iter().map(|v| v * v).sum::<f32>() / emb.len() as f32).sqrt();
    assert!((rms - host).abs() < 1e-5 * host, "output RMS {rms} vs {host}");
}

#[test]
fn attention_entropy_is_ln_of_the_keys_when_uniform_and_falls_as_the_logits_grow() {
    let device = Device::flex();
    let ids = tokens(vec![vec![3, 1, 4, 1, 5, 9, 2, 6]], &device);
    // Zero queries: every score is 0, so query i spreads evenly over its i + 1 keys, with entropy
    // ln(i + 1); the mean over the 8 queries is ln(8!) / 8, in every head and layer.
    let mut uniform = small(NormPlacement::PreNorm, false, &device);
    for layer in &mut uniform.layers {
        let q = &mut layer.self_attn.q_proj;
        q.weight = burn::module::Param::from_tensor(q.weight.val().zeros_like());
    }
    let (_, d) = uniform.forward_diagnosed(ids.clone());
    let expected = (1..=8).map(|i| (i as f32).ln()).sum::<f32>() / 8.0;
    let got: Vec<f32> = d.attn_entropy.into_data().try_to_vec().unwrap();
    assert!(got.iter().all(|&e| (e - expected).abs() < 1e-5), "{got:?} vs {expected}");

    // Scaling the first layer's queries sharpens its attention: the entropy falls towards 0.
    let model = small(NormPlacement::PreNorm, false, &device);
    let first =
        |m: &Chameleon| -> f32 { m.forward_diagnosed(ids.clone()).1.attn_entropy.narrow(0, 0, 1).into_scalar() };
    let mut sharp = model.clone();
    let q = &mut sharp.layers[0].self_attn.q_proj;
    q.weight = burn::module::Param::from_tensor(q.weight.val() * 100.0);
    let (plain, sharpened) = (first(&model), first(&sharp));
    assert!(plain > 0.0 && plain <= expected + 1e-5, "{plain}");
    assert!(sharpened < 0.25 * plain, "entropy {plain} -> {sharpened} with 100x the queries");
}
