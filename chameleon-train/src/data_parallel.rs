//! Data parallelism: one model replica per device, each on its own thread.
//!
//! Every step, micro-batch `i` of the step goes to replica `i mod K`. Each replica runs forward
//! and backward over its share, the replicas' gradients are **summed** (each micro-batch's loss
//! is already scaled by 1/micro-batches-per-step, so the sum is the step's gradient, as on one
//! device), and every replica applies the same global clip and AdamW step to the same summed
//! gradient. Replicas therefore stay equal without exchanging weights, and only the main
//! replica (the first device) writes metrics, evaluates and checkpoints.
//!
//! The sum is either burn's collective `all_reduce` (NCCL on CUDA GPUs), one call per parameter
//! in the module's order on every replica's thread, or, on any backend, the main thread's: each
//! replica hands its gradients over, the main thread adds them up in replica order and hands
//! the sum back ([`GradSync::Host`], what the CPU tests run).
//!
//! The main replica's gradient norm is handed to the others, so every replica clips by the same
//! factor: GPUs autotune their reductions each on its own, and two norms that differ in the
//! last bit would let the replicas drift apart. A worker confirms each step only once its
//! device has finished it, so cross-device copies (a resumed optimizer state moving to its
//! device on the first step) never interleave with the next step's collectives.
//!
//! Dropout draws from burn's one process-wide RNG; with several threads drawing, a run with
//! dropout is not bit-reproducible across data-parallel runs (without dropout it is).

use std::any::Any;
use std::cell::Cell;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::{Scope, ScopedJoinHandle};

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::distributed::{ReduceOperation, all_reduce};
use burn::tensor::{Device, Tensor};
use chameleon_data::{Batch, VocabLayout};
use chameleon_model::Chameleon;

use crate::experiment::Experiment;
use crate::optim::clip_to_norm;
use crate::trainer::{Measured, forward_backward};

/// How replicas sum their gradients.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum GradSync {
    /// The main thread adds every replica's gradients in replica order and hands the sum back
    /// (any backend; tensors move between devices with `to_device`).
    #[default]
    Host,
    /// burn's collective `all_reduce` (sum) between the replicas' threads: NCCL on CUDA.
    Collective,
}

/// From the main thread to a worker, in this order each step.
enum ToWorker {
    /// The step's learning rate, whether to probe, and this replica's micro-batches.
    Step { lr: f64, probe: bool, batches: Vec<(usize, Batch)> },
    /// The summed gradients ([`GradSync::Host`] only).
    Sum(Vec<Option<Tensor<1>>>),
    /// The main replica's global gradient norm, to clip by.
    Norm(f32),
}

/// From a worker to the main thread.
enum FromWorker {
    /// The replica's measurements and, for [`GradSync::Host`], its gradients.
    Share { measured: Vec<Measured>, grads: Option<Vec<Option<Tensor<1>>>> },
    /// The replica's device has finished the step's update.
    Stepped,
}

struct Worker<'scope> {
    device: Device,
    to: Sender<ToWorker>,
    from: Receiver<FromWorker>,
    handle: ScopedJoinHandle<'scope, ()>,
}

impl Worker<'_> {
    fn send(&self, message: ToWorker) -> Result<(), String> {
        self.to.send(message).map_err(|_| self.stopped())
    }

    fn stopped(&self) -> String {
        format!("the replica on {:?} stopped unexpectedly", self.device)
    }
}

/// Runs `body` (the main replica's training loop) with a worker replica on each of `others`
/// (none: `body` just runs), each started from `model` and `optim` as initialised or restored;
/// then stops the workers. Returns the body's result, and `Err` naming each worker that
/// panicked. A panic in `body` goes on once the workers have stopped, or exits the process if
/// they may be blocked in a collective (see [`Replicas::after_panic`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn with_replicas<R>(
    main: &Device,
    others: &[Device],
    sync: GradSync,
    model: Chameleon,
    optim: ModuleOptimizer,
    exp: &Experiment,
    layout: &VocabLayout,
    body: impl FnOnce(&Replicas) -> R,
) -> (R, Result<(), String>) {
    std::thread::scope(|scope| {
        let replicas = Replicas::spawn(scope, main, others, sync, model, optim, exp, layout);
        let result = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(&replicas))) {
            Ok(result) => result,
            Err(panic) => replicas.after_panic(panic),
        };
        (result, replicas.finish())
    })
}

/// The replicas besides the main one (none on a single device).
pub(crate) struct Replicas<'scope> {
    workers: Vec<Worker<'scope>>,
    sync: GradSync,
    /// Every replica's device (the main one first), for the collective.
    devices: Vec<Device>,
    /// Between handing out a step and the end of its sum: workers may be waiting in a
    /// collective that needs the main thread.
    summing: Cell<bool>,
}

impl<'scope> Replicas<'scope> {
    /// Starts one thread per device in `others`, each with a copy of `model` and `optim` on its
    /// device.
    #[allow(clippy::too_many_arguments)]
    fn spawn<'env>(
        scope: &'scope Scope<'scope, 'env>,
        main: &Device,
        others: &[Device],
        sync: GradSync,
        model: Chameleon,
        optim: ModuleOptimizer,
        exp: &'env Experiment,
        layout: &'env VocabLayout,
    ) -> Self {
        let devices: Vec<Device> = std::iter::once(main.clone()).chain(others.iter().cloned()).collect();
        let workers = others
            .iter()
            .map(|device| {
                let (to, rx) = channel();
                let (tx, from) = channel();
                let model = model.clone().fork(&device.clone().autodiff());
                let (optim, device_, group) = (optim.clone(), device.clone(), devices.clone());
                let handle = scope.spawn(move || {
                    let run = || work(model, optim, &device_, rx, tx, sync, &group, exp, layout);
                    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
                        // An error means the main thread hung up: the run is over.
                        Ok(_) => {}
                        // The other replicas may wait for this one in a collective.
                        Err(panic) if sync == GradSync::Collective => {
                            exit_from_collective(&format!("{device_:?}"), &*panic)
                        }
                        Err(panic) => std::panic::resume_unwind(panic),
                    }
                });
                Worker { device: device.clone(), to, from, handle }
            })
            .collect();
        Self { workers, sync, devices, summing: Cell::new(false) }
    }

    /// Hands each worker its share of the step (`shares[0]` is the main replica's, kept).
    pub(crate) fn hand_out(&self, lr: f64, probe: bool, shares: &mut Vec<Vec<(usize, Batch)>>) -> Result<(), String> {
        self.summing.set(true);
        for (worker, batches) in self.workers.iter().zip(shares.drain(1..)) {
            worker.send(ToWorker::Step { lr, probe, batches })?;
        }
        Ok(())
    }

    /// The step's gradient summed over every replica, given the main replica's own; with the
    /// workers' measurements.
    pub(crate) fn sum(
        &self,
        model: &Chameleon,
        grads: GradientsParams,
        main: &Device,
    ) -> Result<(GradientsParams, Vec<Measured>), String> {
        let mut measured = Vec::new();
        if self.workers.is_empty() {
            return Ok((grads, measured));
        }
        let mut share = |worker: &Worker| -> Result<Option<Vec<Option<Tensor<1>>>>, String> {
            match worker.from.recv() {
                Ok(FromWorker::Share { measured: theirs, grads }) => {
                    measured.extend(theirs);
                    Ok(grads)
                }
                _ => Err(worker.stopped()),
            }
        };
        let summed = match self.sync {
            GradSync::Collective => {
                let grads = all_reduce_sum(model, grads, &self.devices);
                for worker in &self.workers {
                    share(worker)?;
                }
                Ok((grads, measured))
            }
            GradSync::Host => {
                let mut sum = flatten(model, grads);
                for worker in &self.workers {
                    for (acc, theirs) in sum.iter_mut().zip(share(worker)?.unwrap_or_default()) {
                        if let Some(theirs) = theirs {
                            let theirs = theirs.to_device(main);
                            *acc = Some(match acc.take() {
                                Some(a) => a + theirs,
                                None => theirs,
                            });
                        }
                    }
                }
                for worker in &self.workers {
                    worker.send(ToWorker::Sum(sum.clone()))?;
                }
                Ok((unflatten(model, sum, main), measured))
            }
        };
        // Workers wait for nothing more from a collective once they have sent their share (a
        // panic above leaves the flag up, on purpose).
        self.summing.set(false);
        summed
    }

    /// Hands the main replica's gradient norm to the workers, which then clip and step.
    pub(crate) fn clip_by(&self, norm: f32) -> Result<(), String> {
        self.workers.iter().try_for_each(|worker| worker.send(ToWorker::Norm(norm)))
    }

    /// Waits until every worker's device has finished the step.
    pub(crate) fn stepped(&self) -> Result<(), String> {
        self.workers.iter().try_for_each(|worker| match worker.from.recv() {
            Ok(FromWorker::Stepped) => Ok(()),
            _ => Err(worker.stopped()),
        })
    }

    /// Stops the workers and waits for them; a worker that panicked is reported.
    fn finish(self) -> Result<(), String> {
        let mut failed = Vec::new();
        for Worker { device, to, from, handle } in self.workers {
            drop((to, from));
            if let Err(panic) = handle.join() {
                failed.push(format!("the replica on {device:?} failed: {}", panic_message(&*panic)));
            }
        }
        if failed.is_empty() { Ok(()) } else { Err(failed.join("; ")) }
    }

    /// After the main replica panicked. If it did while workers may be waiting in a collective
    /// that the main thread will never join, they cannot be woken and joining them would hang:
    /// the process exits, with the message. Otherwise the workers are stopped and the panic
    /// goes on.
    fn after_panic(self, panic: Box<dyn Any + Send>) -> ! {
        if self.sync == GradSync::Collective && !self.workers.is_empty() && self.summing.get() {
            exit_from_collective("main", &*panic);
        }
        let _ = self.finish();
        std::panic::resume_unwind(panic)
    }
}

/// A replica failed while the others may be blocked in a collective (NCCL) that will never
/// complete: nothing can wake them, so the process exits with the message.
fn exit_from_collective(replica: &str, panic: &(dyn Any + Send)) -> ! {
    let message = panic_message(panic);
    tracing::error!("the {replica} replica failed during a data-parallel step: {message}");
    eprintln!("error: the {replica} replica failed during a data-parallel step: {message}");
    std::process::exit(101)
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

/// A worker replica's loop: a step's share, the sum, the clip and AdamW, until the main thread
/// hangs up (an `Err`).
#[allow(clippy::too_many_arguments)]
fn work(
    mut model: Chameleon,
    mut optim: ModuleOptimizer,
    device: &Device,
    rx: Receiver<ToWorker>,
    tx: Sender<FromWorker>,
    sync: GradSync,
    devices: &[Device],
    exp: &Experiment,
    layout: &VocabLayout,
) -> Result<(), ()> {
    let train_device = device.clone().autodiff();
    let hung_up = |_| ();
    while let Ok(ToWorker::Step { lr, probe, batches }) = rx.recv() {
        let (measured, grads) = forward_backward(&model, &batches, exp, layout, probe, &train_device);
        let grads = match sync {
            GradSync::Collective => {
                let grads = all_reduce_sum(&model, grads, devices);
                tx.send(FromWorker::Share { measured, grads: None }).map_err(hung_up)?;
                grads
            }
            GradSync::Host => {
                tx.send(FromWorker::Share { measured, grads: Some(flatten(&model, grads)) }).map_err(hung_up)?;
                let Ok(ToWorker::Sum(sum)) = rx.recv() else { return Err(()) };
                unflatten(&model, sum, device)
            }
        };
        let Ok(ToWorker::Norm(norm)) = rx.recv() else { return Err(()) };
        let grads = clip_to_norm(&model, grads, norm, exp.optim.grad_clip, device);
        model = optim.step(lr, model, grads);
        device.sync().map_err(|e| tracing::error!("the replica on {device:?}: {e:?}"))?;
        tx.send(FromWorker::Stepped).map_err(hung_up)?;
    }
    Ok(())
}

/// Every parameter's gradient (if it has one) as a flat vector, in the module's order.
fn flatten(model: &Chameleon, mut grads: GradientsParams) -> Vec<Option<Tensor<1>>> {
    struct Flatten<'a>(&'a mut GradientsParams, Vec<Option<Tensor<1>>>);
    impl ModuleVisitor for Flatten<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.1.push(self.0.remove::<D>(param.id).map(|g| {
                let n = g.shape().num_elements();
                g.reshape([n])
            }));
        }
    }
    let mut visitor = Flatten(&mut grads, Vec::new());
    model.visit(&mut visitor);
    visitor.1
}

/// The inverse of [`flatten`], on `device`.
fn unflatten(model: &Chameleon, flat: Vec<Option<Tensor<1>>>, device: &Device) -> GradientsParams {
    struct Unflatten<'a>(std::vec::IntoIter<Option<Tensor<1>>>, GradientsParams, &'a Device);
    impl ModuleVisitor for Unflatten<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(Some(g)) = self.0.next() {
                let dims: [usize; D] = param.lazy_shape().dims();
                self.1.register::<D>(param.id, g.to_device(self.2).reshape(dims));
            }
        }
    }
    let mut visitor = Unflatten(flat.into_iter(), GradientsParams::new(), device);
    model.visit(&mut visitor);
    visitor.1
}

/// Sums every parameter's gradient across `devices` with burn's collective, in the module's
/// order (the same on every replica, as NCCL requires). A parameter without a gradient takes
/// part with zeros, so every replica issues the same calls.
fn all_reduce_sum(model: &Chameleon, mut grads: GradientsParams, devices: &[Device]) -> GradientsParams {
    struct AllReduce<'a>(&'a mut GradientsParams, &'a [Device]);
    impl ModuleVisitor for AllReduce<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let own = self.0.remove::<D>(param.id);
            let present = own.is_some();
            let g = own.unwrap_or_else(|| param.val().inner().zeros_like());
            let summed = all_reduce(g, ReduceOperation::Sum, self.1.to_vec()).resolve();
            if present {
                self.0.register::<D>(param.id, summed);
            }
        }
    }
    model.visit(&mut AllReduce(&mut grads, devices));
    grads
}
