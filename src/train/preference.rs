//! Adapters for the preference losses: paired (DPO family, CPO / SimPO, ORPO) and unpaired
//! (KTO), each a policy plus an optional frozen reference.

use burn::module::{Module, ModuleDisplay};
use burn::tensor::{Device, Int, Tensor};
use burn::train::{InferenceStep, TrainOutput, TrainStep};

use crate::IGNORE_INDEX;

use super::{CausalLmLogps, PreferenceInput, TrlOutput, UnpairedInput, ids_onto, onto};
use crate::distributed::{KlParts, Reducer, SharedReducer, StepCounts};
use crate::error::{Error, Result, check_non_empty, check_same_shape};
use crate::losses::{
    CpoLoss, DpoLoss, KtoLoss, KtoLossConfig, KtoLossType, OrpoLoss, PairedLayout, PreferenceBatch,
    UnpairedBatch, kto_kl_estimate,
};

/// The loss a [`PreferenceModel`] trains with.
#[derive(Debug, Clone)]
pub enum PreferenceObjective {
    /// A DPO-family loss (needs reference log-probs).
    Dpo(DpoLoss),
    /// CPO, SimPO, AlphaPO (reference-free).
    Cpo(CpoLoss),
    /// ORPO (reference-free; its NLL term runs over the labelled completion tokens).
    Orpo(OrpoLoss),
}

impl From<DpoLoss> for PreferenceObjective {
    fn from(loss: DpoLoss) -> Self {
        Self::Dpo(loss)
    }
}
impl From<CpoLoss> for PreferenceObjective {
    fn from(loss: CpoLoss) -> Self {
        Self::Cpo(loss)
    }
}
impl From<OrpoLoss> for PreferenceObjective {
    fn from(loss: OrpoLoss) -> Self {
        Self::Orpo(loss)
    }
}

impl PreferenceObjective {
    /// Whether the loss has an NLL term over the chosen tokens (DPO `sft`, CPO `cpo_alpha`,
    /// ORPO).
    fn has_nll_term(&self) -> bool {
        match self {
            Self::Dpo(loss) => loss.has_nll_term(),
            Self::Cpo(loss) => loss.has_nll_term(),
            Self::Orpo(_) => true,
        }
    }

    /// The objective reduced with the step's global counts: pairs, and chosen tokens for the
    /// NLL term.
    fn with_global_counts(&self, counts: &StepCounts) -> Result<Self> {
        let pairs = counts.pair_normalizer()?;
        let nll = if self.has_nll_term() {
            Some(counts.token_normalizer()?)
        } else {
            None
        };
        Ok(match self {
            Self::Dpo(loss) => Self::Dpo(loss.with_normalizers(pairs, nll)),
            Self::Cpo(loss) => Self::Cpo(loss.with_normalizers(pairs, nll)),
            Self::Orpo(loss) => Self::Orpo(loss.with_normalizers(pairs, nll)),
        })
    }
}

/// A burn-train model for paired preference optimization: the policy is trained and
/// checkpointed; the reference (`#[module(skip)]`, see the [module docs](super)) is not.
///
/// Each step runs the policy once on the stacked `[2B, T]` chosen-then-rejected rows, splits
/// the log-probs, takes the reference log-probs from the input (precomputed) or from the
/// reference model, and applies the objective. Metrics: TRL's keys
/// ([`TrlMetric::PREFERENCE_KEYS`](super::TrlMetric::PREFERENCE_KEYS)).
///
/// # Data parallel
///
/// With [`with_reducer`](Self::with_reducer), each *training* step (`TrainStep::step`) sums
/// its counts (pairs, and chosen tokens when the loss has an NLL term) over the ranks in one
/// reducer call and normalizes the loss by the global counts, so the gradients of the ranks
/// add up to the gradient of the whole step's batch: use it with burn-train's `MultiDevice`
/// strategy (which sums the workers' gradients) and a [`ThreadReducer`](crate::distributed::ThreadReducer),
/// or with a collective reducer where burn has one. Validation (`InferenceStep`) and
/// [`try_forward`](Self::try_forward) stay local (the batch's own mean). Every rank must run
/// the same number of training steps (equal shards), as for any collective.
#[derive(Module, Debug)]
pub struct PreferenceModel<P, R = P> {
    /// The trained policy.
    pub policy: P,
    /// The frozen reference (not a parameter: no gradient, no optimizer state, not saved).
    #[module(skip)]
    pub ref_model: Option<R>,
    /// The loss.
    #[module(skip)]
    pub objective: PreferenceObjective,
    /// Sums the step's counts over data-parallel ranks (training steps only).
    #[module(skip)]
    reducer: Option<SharedReducer>,
}

impl<P, R> PreferenceModel<P, R> {
    /// The adapter. `reference`: the frozen model (usually `policy.valid()`), or `None` when
    /// the inputs carry precomputed reference log-probs or the objective needs none.
    pub fn new(policy: P, ref_model: Option<R>, objective: impl Into<PreferenceObjective>) -> Self {
        Self {
            policy,
            ref_model,
            objective: objective.into(),
            reducer: None,
        }
    }

    /// Training steps normalize the loss by the counts of the whole step, summed over the
    /// ranks by `reducer` (see [Data parallel](Self#data-parallel)).
    pub fn with_reducer(mut self, reducer: impl Reducer + 'static) -> Self {
        self.reducer = Some(SharedReducer::new(reducer));
        self
    }
}

/// Pads `[N, w]` ids to `[N, t]` with `value`.
fn pad_to(ids: Tensor<2, Int>, t: usize, value: i64) -> Tensor<2, Int> {
    let [n, w] = ids.dims();
    if w == t {
        return ids;
    }
    let device = ids.device();
    Tensor::cat(vec![ids, Tensor::full([n, t - w], value, &device)], 1)
}

/// The stacked `[2N, T]` rows of two `[N, *]` halves (padded to one width).
fn stack(
    first: (Tensor<2, Int>, Tensor<2, Int>),
    second: (Tensor<2, Int>, Tensor<2, Int>),
    names: [&'static str; 4],
) -> Result<(Tensor<2, Int>, Tensor<2, Int>)> {
    let [n, t1] = first.0.dims();
    check_non_empty(names[0], n, "the batch has no row")?;
    check_same_shape(names[1], &first.1.dims(), &[n, t1], names[0])?;
    let [n2, t2] = second.0.dims();
    if n2 != n {
        return Err(Error::shape(
            names[2],
            format!("[{n}, T] (as {})", names[0]),
            &[n2, t2],
        ));
    }
    check_same_shape(names[3], &second.1.dims(), &[n2, t2], names[2])?;
    let t = t1.max(t2);
    let ids = PairedLayout::stack(pad_to(first.0, t, 0), pad_to(second.0, t, 0));
    let labels = PairedLayout::stack(
        pad_to(first.1, t, IGNORE_INDEX),
        pad_to(second.1, t, IGNORE_INDEX),
    );
    Ok((ids, labels))
}

/// Summed log-probs of the reference on `ids` (computed on the reference's own device), moved
/// to `device`.
fn ref_logps<R: CausalLmLogps + Module + ModuleDisplay>(
    ref_model: &R,
    ids: Tensor<2, Int>,
    labels: Tensor<2, Int>,
    device: &Device,
) -> Tensor<1> {
    let on = ref_model
        .devices()
        .first()
        .cloned()
        .unwrap_or_else(|| device.clone());
    let sums = ref_model
        .token_logps(ids_onto(ids, &on), ids_onto(labels, &on))
        .sum();
    onto(sums, device)
}

fn optional_pair(
    a: Option<Tensor<1>>,
    b: Option<Tensor<1>>,
    names: &'static str,
) -> Result<Option<(Tensor<1>, Tensor<1>)>> {
    match (a, b) {
        (Some(a), Some(b)) => Ok(Some((a, b))),
        (None, None) => Ok(None),
        _ => Err(Error::MissingInput {
            arg: names,
            needed_by: format!("{names} must be given together"),
        }),
    }
}

impl<P: CausalLmLogps + Module + ModuleDisplay, R: CausalLmLogps + Module + ModuleDisplay>
    PreferenceModel<P, R>
{
    /// The loss and metrics of one batch. Errors: inconsistent shapes ([`Error::Shape`]), an
    /// empty batch, a DPO objective with neither a reference model nor precomputed reference
    /// log-probs ([`Error::MissingInput`]), and the loss's own errors.
    pub fn try_forward(&self, input: PreferenceInput) -> Result<TrlOutput> {
        self.forward_with(input, None)
    }

    /// [`try_forward`](Self::try_forward), normalized by the step's global counts when a
    /// reducer is given (one reducer call, plus one host read of the chosen-token count when
    /// the loss has an NLL term).
    fn forward_with(
        &self,
        input: PreferenceInput,
        reducer: Option<&SharedReducer>,
    ) -> Result<TrlOutput> {
        let b = input.chosen_ids.dims()[0];
        let (ids, labels) = stack(
            (input.chosen_ids, input.chosen_labels),
            (input.rejected_ids, input.rejected_labels),
            [
                "chosen_ids",
                "chosen_labels",
                "rejected_ids",
                "rejected_labels",
            ],
        )?;
        let tokens = self.policy.token_logps(ids.clone(), labels.clone());
        let (chosen, rejected) = PairedLayout::new(b).split_tokens(&tokens);
        let batch = PreferenceBatch::try_from_tokens(chosen, rejected)?;
        let global;
        let objective = match reducer {
            None => &self.objective,
            Some(reducer) => {
                let mut local = StepCounts::from_pairs(b);
                if self.objective.has_nll_term() {
                    let nll_tokens = batch.nll_tokens.as_ref().or(batch.chosen_tokens.as_ref());
                    if let Some(tokens) = nll_tokens {
                        local.tokens =
                            crate::reduce::global_token_count(std::slice::from_ref(&tokens.mask));
                    }
                }
                global = self
                    .objective
                    .with_global_counts(&reducer.reduce(&local)?)?;
                &global
            }
        };
        let out = match objective {
            PreferenceObjective::Dpo(loss) => {
                let device = batch.chosen_logps.device();
                let given = optional_pair(
                    input.ref_chosen_logps,
                    input.ref_rejected_logps,
                    "ref_chosen_logps and ref_rejected_logps",
                )?;
                let (c, r) = match (given, &self.ref_model) {
                    (Some((c, r)), _) => (onto(c, &device), onto(r, &device)),
                    (None, Some(ref_model)) => {
                        let both = ref_logps(ref_model, ids, labels, &device);
                        (both.clone().narrow(0, 0, b), both.narrow(0, b, b))
                    }
                    (None, None) => {
                        return Err(Error::MissingInput {
                            arg: "ref_chosen_logps, ref_rejected_logps",
                            needed_by: "a DPO-family objective needs reference log-probs: give PreferenceModel a reference model or put ref_*_logps in the input".into(),
                        });
                    }
                };
                loss.try_forward(&batch.with_ref_logps(c, r))?
            }
            PreferenceObjective::Cpo(loss) => loss.try_forward(&batch)?,
            PreferenceObjective::Orpo(loss) => loss.try_forward(&batch)?,
        };
        Ok(TrlOutput::new(out, b))
    }

    crate::error::panicking! {
        /// Panicking form of [`try_forward`](Self::try_forward).
        pub fn forward(&self, input: PreferenceInput) -> TrlOutput = try_forward;
    }
}

impl<P, R> TrainStep for PreferenceModel<P, R>
where
    P: CausalLmLogps + Module + ModuleDisplay,
    R: CausalLmLogps + Module + ModuleDisplay,
{
    type Input = PreferenceInput;
    type Output = TrlOutput;

    fn step(&self, input: PreferenceInput) -> TrainOutput<TrlOutput> {
        let out = super::step_or_abort(
            self.forward_with(input, self.reducer.as_ref()),
            self.reducer.as_ref(),
        );
        let grads = out.loss.backward();
        TrainOutput::new(self, grads, out)
    }
}

impl<P, R> InferenceStep for PreferenceModel<P, R>
where
    P: CausalLmLogps + Module + ModuleDisplay,
    R: CausalLmLogps + Module + ModuleDisplay,
{
    type Input = PreferenceInput;
    type Output = TrlOutput;

    fn step(&self, input: PreferenceInput) -> TrlOutput {
        self.forward(input)
    }
}

/// A burn-train model for KTO (and APO-zero unpaired): the policy is trained, the reference
/// (`#[module(skip)]`) is not. KTO's KL estimate runs the policy (without gradient) and the
/// reference on the input's mismatched rows. Metrics:
/// [`TrlMetric::KTO_KEYS`](super::TrlMetric::KTO_KEYS).
#[derive(Module, Debug)]
pub struct KtoModel<P, R = P> {
    /// The trained policy.
    pub policy: P,
    /// The frozen reference (not a parameter).
    #[module(skip)]
    pub ref_model: Option<R>,
    #[module(skip)]
    loss: KtoLoss,
    #[module(skip)]
    needs_kl: bool,
    #[module(skip)]
    reducer: Option<SharedReducer>,
}

impl<P, R> KtoModel<P, R> {
    /// The adapter; the config is validated here.
    pub fn try_new(policy: P, ref_model: Option<R>, config: &KtoLossConfig) -> Result<Self> {
        Ok(Self {
            policy,
            ref_model,
            loss: config.try_init()?,
            needs_kl: config.loss_type == KtoLossType::Kto,
            reducer: None,
        })
    }

    /// Training steps use the KL estimate and the example count of the whole step, summed
    /// over the ranks by `reducer` in **one** call (the counts and KTO's
    /// [`KlParts`] packed together), so the ranks' gradients add up to the gradient of the
    /// whole step's batch (see [`PreferenceModel`]'s data-parallel section; the same rules
    /// apply). Validation and [`try_forward`](Self::try_forward) stay local.
    pub fn with_reducer(mut self, reducer: impl Reducer + 'static) -> Self {
        self.reducer = Some(SharedReducer::new(reducer));
        self
    }

    crate::error::panicking! {
        /// Panicking form of [`try_new`](Self::try_new) (an invalid config).
        pub fn new(policy: P, ref_model: Option<R>, config: &KtoLossConfig) -> Self = Self::try_new;
    }
}

impl<P: CausalLmLogps + Module + ModuleDisplay, R: CausalLmLogps + Module + ModuleDisplay>
    KtoModel<P, R>
{
    fn ref_logps_or_given(
        &self,
        given: Option<Tensor<1>>,
        ids: Tensor<2, Int>,
        labels: Tensor<2, Int>,
        device: &Device,
        name: &'static str,
    ) -> Result<Tensor<1>> {
        match (given, &self.ref_model) {
            (Some(t), _) => Ok(onto(t, device)),
            (None, Some(ref_model)) => Ok(ref_logps(ref_model, ids, labels, device)),
            (None, None) => Err(Error::MissingInput {
                arg: name,
                needed_by: format!(
                    "KTO needs reference log-probs: give KtoModel a reference model or put {name} in the input"
                ),
            }),
        }
    }

    /// The loss and metrics of one batch. Errors: inconsistent shapes, an empty batch, no
    /// reference, `kto` without the mismatched KL rows ([`Error::MissingInput`]), and the
    /// loss's own errors.
    pub fn try_forward(&self, input: UnpairedInput) -> Result<TrlOutput> {
        self.forward_with(input, None)
    }

    /// [`try_forward`](Self::try_forward) with the step's global KL estimate and example count
    /// when a reducer is given (one host read for the local KL parts, one reducer call).
    fn forward_with(
        &self,
        input: UnpairedInput,
        reducer: Option<&SharedReducer>,
    ) -> Result<TrlOutput> {
        let [n, t] = input.ids.dims();
        check_non_empty("ids", n, "the batch has no row")?;
        check_same_shape("labels", &input.labels.dims(), &[n, t], "ids")?;
        check_same_shape(
            "desirable",
            &input.desirable.dims(),
            &[n],
            "the rows of ids",
        )?;
        let tokens = self
            .policy
            .token_logps(input.ids.clone(), input.labels.clone());
        let logps = tokens.sum();
        let device = logps.device();
        let refs = self.ref_logps_or_given(
            input.ref_logps,
            input.ids,
            input.labels,
            &device,
            "ref_logps",
        )?;
        let mut batch = UnpairedBatch::new(logps, refs, input.desirable);
        let mut kl_logps = None;
        if self.needs_kl {
            let (Some(kl_ids), Some(kl_labels)) = (input.kl_ids, input.kl_labels) else {
                return Err(Error::MissingInput {
                    arg: "kl_ids, kl_labels",
                    needed_by: "the kto loss type needs the mismatched rows (TokenBatcher builds them for batches of 2 or more)".into(),
                });
            };
            let [nk, tk] = kl_ids.dims();
            check_same_shape("kl_labels", &kl_labels.dims(), &[nk, tk], "kl_ids")?;
            let policy_kl = self
                .policy
                .token_logps(kl_ids.clone(), kl_labels.clone())
                .sum()
                .detach();
            let ref_kl = self.ref_logps_or_given(
                input.ref_kl_logps,
                kl_ids,
                kl_labels,
                &device,
                "ref_kl_logps",
            )?;
            kl_logps = Some((policy_kl, ref_kl));
        }
        let (kl, loss) = match reducer {
            None => (
                kl_logps.map(|(policy, reference)| kto_kl_estimate(policy, reference)),
                self.loss.clone(),
            ),
            Some(reducer) => {
                let local = StepCounts::from_sequences(n);
                let (counts, kl) = match kl_logps {
                    Some((policy, reference)) => {
                        let parts = (local, KlParts::from_logps(policy, reference)?);
                        let (counts, kl) = reducer.reduce(&parts)?;
                        (counts, Some(kl.finish(&batch.logps)?))
                    }
                    None => (reducer.reduce(&local)?, None),
                };
                (kl, self.loss.with_normalizer(counts.sequence_normalizer()?))
            }
        };
        if let Some(kl) = kl {
            batch = batch.with_kl(kl);
        }
        Ok(TrlOutput::new(loss.try_forward(&batch)?, n))
    }

    crate::error::panicking! {
        /// Panicking form of [`try_forward`](Self::try_forward).
        pub fn forward(&self, input: UnpairedInput) -> TrlOutput = try_forward;
    }
}

impl<P, R> TrainStep for KtoModel<P, R>
where
    P: CausalLmLogps + Module + ModuleDisplay,
    R: CausalLmLogps + Module + ModuleDisplay,
{
    type Input = UnpairedInput;
    type Output = TrlOutput;

    fn step(&self, input: UnpairedInput) -> TrainOutput<TrlOutput> {
        let out = super::step_or_abort(
            self.forward_with(input, self.reducer.as_ref()),
            self.reducer.as_ref(),
        );
        let grads = out.loss.backward();
        TrainOutput::new(self, grads, out)
    }
}

impl<P, R> InferenceStep for KtoModel<P, R>
where
    P: CausalLmLogps + Module + ModuleDisplay,
    R: CausalLmLogps + Module + ModuleDisplay,
{
    type Input = UnpairedInput;
    type Output = TrlOutput;

    fn step(&self, input: UnpairedInput) -> TrlOutput {
        self.forward(input)
    }
}
