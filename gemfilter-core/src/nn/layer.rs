//! One pre-norm decoder layer: the unit every pass is a loop over.

use burn::module::Module;
use burn::tensor::{Device, Tensor};

use super::{Attention, AttentionKernel, Mlp, Qkv, RmsNorm, RopeTables};
use crate::config::DecoderConfig;
use crate::error::Result;
use crate::hook::{Flow, LayerHook, LayerView};
use crate::kv::KvStore;

/// `h += attn(norm(h)); h += mlp(norm(h))`. Field names follow Hugging Face checkpoints.
#[derive(Module, Debug)]
pub struct DecoderLayer {
    /// Norm before attention.
    pub input_layernorm: RmsNorm,
    /// Self-attention.
    pub self_attn: Attention,
    /// Norm before the MLP.
    pub post_attention_layernorm: RmsNorm,
    /// Feed-forward block.
    pub mlp: Mlp,
}

/// What a layer needs besides its input: its index, the rotary tables of the pass's positions
/// and how attention is computed.
#[derive(Debug, Clone, Copy)]
pub struct LayerContext<'a> {
    /// Index of the layer (0-based), for the KV store and the hook.
    pub index: usize,
    /// Rotary tables of the positions the pass processes.
    pub rope: &'a RopeTables,
    /// The attention kernel of the pass.
    pub kernel: &'a AttentionKernel,
}

/// What a layer hands back.
#[derive(Debug, Clone)]
pub enum LayerOutput {
    /// The layer ran: its output hidden state.
    Hidden(Tensor<3>),
    /// The hook stopped the pass at this layer: the hidden state that entered it, untouched.
    Stopped(Tensor<3>),
}

impl DecoderLayer {
    /// An uninitialised layer shaped by `config`.
    pub fn new(config: &DecoderConfig, device: &Device) -> Self {
        Self {
            input_layernorm: RmsNorm::new(config.hidden_size, config.rms_norm_eps, device),
            self_attn: Attention::new(
                config.hidden_size,
                config.num_heads,
                config.num_kv_heads,
                config.head_dim,
                config.attention_bias,
                device,
            ),
            post_attention_layernorm: RmsNorm::new(config.hidden_size, config.rms_norm_eps, device),
            mlp: Mlp::new(
                config.hidden_size,
                config.intermediate_size,
                config.mlp_bias,
                config.activation,
                device,
            ),
        }
    }

    /// Runs the layer over `hidden` (`[1, positions, hidden]`): norm → attention through `kv`
    /// → residual → norm → MLP → residual. `hook` sees the layer once its keys exist and may
    /// stop the pass before its attention.
    pub fn forward(
        &self,
        hidden: Tensor<3>,
        context: LayerContext<'_>,
        kv: &mut dyn KvStore,
        hook: &mut dyn LayerHook,
    ) -> Result<LayerOutput> {
        let (attention, rope, kernel) = (&self.self_attn, context.rope, context.kernel);
        let device = hidden.device();
        // Every step is a profile section (see `crate::profile`); without a profile, just a call.
        let normed = kernel.time("norm", &device, || {
            self.input_layernorm.forward(hidden.clone())
        });
        let keys = kernel.time("projections", &device, || {
            attention.project_keys(normed.clone())
        });
        let keys = kernel.time("rotary", &device, || rope.apply(keys));
        let view = LayerView {
            layer: context.index,
            normed: &normed,
            keys: &keys,
            attention,
            rope,
        };
        if hook.at_layer(&view) == Flow::Stop {
            return Ok(LayerOutput::Stopped(hidden));
        }
        let (queries, values) = kernel.time("projections", &device, || {
            (
                attention.project_queries(normed.clone()),
                attention.values(normed),
            )
        });
        let queries = kernel.time("rotary", &device, || rope.apply(queries));
        let qkv = Qkv {
            queries,
            keys,
            values,
        };
        let attended = kv.attend(context.index, qkv, kernel)?;
        let output = kernel.time("projections", &device, || attention.output(attended));
        let hidden = kernel.time("residual", &device, || hidden + output);
        let mlp_input = kernel.time("norm", &device, || {
            self.post_attention_layernorm.forward(hidden.clone())
        });
        let mlp = self.mlp.forward_timed(mlp_input, kernel, &device);
        Ok(LayerOutput::Hidden(kernel.time(
            "residual",
            &device,
            || hidden + mlp,
        )))
    }
}
