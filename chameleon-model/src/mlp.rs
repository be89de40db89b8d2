//! The SwiGLU feed-forward: `down(silu(gate(x)) * up(x))`.

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::Tensor;
use burn::tensor::activation::silu;

/// SwiGLU feed-forward; field names follow the HF checkpoint (`mlp.gate_proj`, ...).
#[derive(Module, Debug)]
pub struct Mlp {
    /// `d_model -> ffn`.
    pub gate_proj: Linear,
    /// `d_model -> ffn`.
    pub up_proj: Linear,
    /// `ffn -> d_model`.
    pub down_proj: Linear,
}

impl Mlp {
    /// `x`: `[batch, seq, d_model]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let gate = silu(self.gate_proj.forward(x.clone()));
        self.down_proj.forward(gate * self.up_proj.forward(x))
    }
}
