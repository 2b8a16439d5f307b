//! The LM head handed to [`super::FusedLogps`]: its weight with the layout explicit.

use burn::nn::Linear;
use burn::tensor::Tensor;

/// How an LM head's weight is laid out. The two layouts have the same shape when the hidden
/// size equals the vocabulary size, so the layout is part of the type ([`LmHead`]) rather than
/// guessed from the shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LmHeadLayout {
    /// `[V, H]` (`vocab_size x hidden_size`): PyTorch's `nn.Linear.weight` (`[out, in]`), what
    /// Hugging Face checkpoints and TRL hold.
    VocabMajor,
    /// `[H, V]` (`hidden_size x vocab_size`): burn's [`Linear`] (`[d_input, d_output]`),
    /// `logits = hidden @ weight`.
    HiddenMajor,
}

/// An LM head (weight, optional bias) for [`super::FusedLogps`], with the weight's layout
/// in the type: a wrong layout cannot pass silently, even when `H == V`.
///
/// Build it from a burn [`Linear`] ([`from_linear`](Self::from_linear) or `From<&Linear>`, no
/// copy: the fused op reads the `[H, V]` weight in place and returns its gradient in that
/// layout), or from a raw weight with [`vocab_major`](Self::vocab_major) (`[V, H]`, PyTorch /
/// Hugging Face) or [`hidden_major`](Self::hidden_major) (`[H, V]`, burn).
///
/// The tensors are held by value (a `Tensor` clone shares its data and its autodiff node), so
/// gradients flow back to the parameters the head was built from.
///
/// ```
/// # use burn::nn::LinearConfig;
/// # use burn::tensor::{Device, Int, Tensor};
/// use burn_rlhf::logps::{FusedLogpsConfig, LmHead, LmHeadLayout};
/// let device = Device::flex().autodiff();
/// let (b, t, h, v) = (2, 5, 8, 11);
/// let lm_head = LinearConfig::new(h, v).with_bias(false).init(&device); // weight [H, V]
/// # let hidden = Tensor::<3>::zeros([b, t, h], &device);
/// # let labels = Tensor::<2, Int>::zeros([b, t], &device);
/// let fused = FusedLogpsConfig::new().init();
/// let (gathered, _) = fused.forward_causal_head(hidden, &lm_head, labels);
/// assert_eq!(gathered.logps.dims(), [b, t - 1]);
/// assert_eq!(LmHead::from_linear(&lm_head).layout(), LmHeadLayout::HiddenMajor);
/// ```
#[derive(Debug, Clone)]
pub struct LmHead {
    weight: Tensor<2>,
    bias: Option<Tensor<1>>,
    layout: LmHeadLayout,
}

impl LmHead {
    /// The head of a burn [`Linear`] (`d_input = H`, `d_output = V`): its weight `[H, V]` and
    /// its bias `[V]` if it has one. burn's `LinearLayout::Col` only changes how the weight is
    /// stored in memory, not its `[H, V]` shape, so it is read in place as well.
    pub fn from_linear(linear: &Linear) -> Self {
        Self {
            weight: linear.weight.val(),
            bias: linear.bias.as_ref().map(|b| b.val()),
            layout: LmHeadLayout::HiddenMajor,
        }
    }

    /// A `[V, H]` weight (PyTorch `nn.Linear.weight`, Hugging Face `lm_head.weight`, a tied
    /// embedding table) and an optional `[V]` bias.
    pub fn vocab_major(weight: Tensor<2>, bias: Option<Tensor<1>>) -> Self {
        Self {
            weight,
            bias,
            layout: LmHeadLayout::VocabMajor,
        }
    }

    /// A `[H, V]` weight (burn's [`Linear`] layout) and an optional `[V]` bias.
    pub fn hidden_major(weight: Tensor<2>, bias: Option<Tensor<1>>) -> Self {
        Self {
            weight,
            bias,
            layout: LmHeadLayout::HiddenMajor,
        }
    }

    /// The weight, in [`layout`](Self::layout).
    pub fn weight(&self) -> &Tensor<2> {
        &self.weight
    }

    /// The bias `[V]`, if any.
    pub fn bias(&self) -> Option<&Tensor<1>> {
        self.bias.as_ref()
    }

    /// The weight's layout.
    pub fn layout(&self) -> LmHeadLayout {
        self.layout
    }

    /// `(hidden_size, vocab_size)` read from the weight's shape and layout.
    pub fn sizes(&self) -> (usize, usize) {
        let [a, b] = self.weight.dims();
        match self.layout {
            LmHeadLayout::VocabMajor => (b, a),
            LmHeadLayout::HiddenMajor => (a, b),
        }
    }

    pub(crate) fn into_parts(self) -> (Tensor<2>, Option<Tensor<1>>, LmHeadLayout) {
        (self.weight, self.bias, self.layout)
    }
}

impl From<&Linear> for LmHead {
    fn from(linear: &Linear) -> Self {
        Self::from_linear(linear)
    }
}

impl From<&LmHead> for LmHead {
    fn from(head: &LmHead) -> Self {
        head.clone()
    }
}
