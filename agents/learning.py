"""Reference agents of the learning group: LearningOrchestrationService, LearningOpportunityDetector,
LearningManager, ActiveLearningMonitor, LearningAdjusterAgent, SelfTrainingOrchestrator,
LocalFineTunerAgent.

The learning is real and small: multinomial naive Bayes text classifiers (trained, evaluated on
held-out examples, self-trained on unlabelled text, fine-tuned with weighted adapter counts), Bayesian
knowledge tracing for skill mastery, uncertainty sampling for active learning, threshold search and
reduce-on-plateau for hyperparameters. What stands in is scale: word counts instead of neural networks.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Any

from sunsetd.agent import AgentError, BadRequest

from agents.infrastructure import TWIN, CatalogAgent, field
from agents.memory import terms

MMS = "ModelManagerSuite"
RC = "RequestCoordinator"
MEMORY = "MemoryClient"
LOS = "LearningOrchestrationService"
MANAGER = "LearningManager"
STO = "SelfTrainingOrchestrator"


# ---- naive Bayes, shared by the group --------------------------------------------------------------------
class NaiveBayes:
    """Multinomial naive Bayes over stemmed words, with Laplace smoothing; counts may be weighted."""

    def __init__(self, alpha: float = 1.0):
        self.alpha = alpha
        self.docs: Counter = Counter()  # label -> (weighted) documents
        self.words: dict[str, Counter] = {}  # label -> word -> (weighted) count

    def add(self, text: str, label: str, weight: float = 1.0) -> None:
        """One example; `weight` scales its word counts (the prior counts it once, so that upweighted
        examples sharpen what a label's words are without making the label itself more likely)."""
        self.docs[label] += 1
        self.words.setdefault(label, Counter()).update({w: weight * c for w, c in Counter(terms(text)).items()})

    def fit(self, examples: list[tuple[str, str]], weight: float = 1.0) -> "NaiveBayes":
        for text, label in examples:
            self.add(text, label, weight)
        return self

    @property
    def labels(self) -> list[str]:
        return sorted(self.docs)

    @property
    def vocabulary(self) -> set[str]:
        return set().union(*(set(c) for c in self.words.values())) if self.words else set()

    def proba(self, text: str) -> dict[str, float]:
        if not self.docs:
            raise AgentError("the model has not been trained")
        vocab = len(self.vocabulary) or 1
        total_docs = sum(self.docs.values())
        words = terms(text)
        logp = {}
        for label in self.labels:
            counts = self.words.get(label, Counter())
            total = sum(counts.values())
            lp = math.log(self.docs[label] / total_docs)
            for w in words:
                lp += math.log((counts.get(w, 0) + self.alpha) / (total + self.alpha * vocab))
            logp[label] = lp
        top = max(logp.values())
        z = sum(math.exp(v - top) for v in logp.values())
        return {label: math.exp(v - top) / z for label, v in logp.items()}

    def predict(self, text: str) -> tuple[str, float, float]:
        """(label, confidence, margin between the two most probable labels)."""
        p = self.proba(text)
        ranked = sorted(p.items(), key=lambda kv: (-kv[1], kv[0]))
        second = ranked[1][1] if len(ranked) > 1 else 0.0
        return ranked[0][0], ranked[0][1], ranked[0][1] - second

    def accuracy(self, examples: list[tuple[str, str]]) -> float | None:
        if not examples:
            return None
        return sum(self.predict(t)[0] == label for t, label in examples) / len(examples)

    def to_dict(self) -> dict:
        return {"alpha": self.alpha, "docs": dict(self.docs), "words": {k: dict(v) for k, v in self.words.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> "NaiveBayes":
        nb = cls(float(d.get("alpha", 1.0)))
        nb.docs = Counter({str(k): float(v) for k, v in d["docs"].items()})
        nb.words = {str(k): Counter({str(w): float(c) for w, c in v.items()}) for k, v in d["words"].items()}
        return nb

    def size_bytes(self) -> int:
        return sum(len(w) + 16 for c in self.words.values() for w in c) + 64 * len(self.docs)


def examples_of(body: Any, key: str, required: bool = True) -> list[tuple[str, str]]:
    """body[key] as (text, label) pairs, from a list of {text, label}."""
    raw = field(body, key, list) if required else field(body, key, list, [])
    return [(field(e, "text", str), field(e, "label", str)) for e in raw]


def texts_of(body: Any, key: str) -> list[str]:
    raw = field(body, key, list)
    if not all(isinstance(t, str) for t in raw):
        raise BadRequest(f"{key} must be a list of strings")
    return raw


def split_holdout(examples: list[tuple[str, str]], every: int) -> tuple[list, list]:
    """Deterministic split: every `every`-th example of each label is held out (when a label has 2+)."""
    seen: Counter = Counter()
    train, held = [], []
    for text, label in examples:
        seen[label] += 1
        (held if every and seen[label] % every == 0 else train).append((text, label))
    return train, held


# ---- LearningOrchestrationService ------------------------------------------------------------------------
class LearningOrchestrationService(CatalogAgent):
    """Training jobs: queue, placement, training and evaluation.

    Real: jobs of labelled examples are queued with an id; a job naming a base model is placed local or
    remote by ModelManagerSuite's route (a remote job is deferred: there is nowhere to send it); `run`
    trains each queued job's naive Bayes classifier on its examples less a deterministic hold-out
    (every `holdout_every`-th example of each label), evaluates on the hold-out, keeps the model and
    reports the job figures to ObservabilityHub; `predict` uses a trained job's model. Stands in: word
    counts for the fine-tuned network a real job would produce.
    """

    CAPABILITIES = ("learning.jobs", "learning.train")

    def setup(self) -> None:
        self.jobs: dict[str, dict] = {}
        self.models: dict[str, NaiveBayes] = {}
        self.next_id = 0
        self.holdout_every = int(self.config.get("holdout_every", 4))
        self.max_examples = int(self.config.get("max_examples", 5000))
        super().setup()

    def handle_submit(self, body: Any) -> dict:
        """{task, examples: [{text, label}], base_model?} -> {job, state, route}."""
        task = field(body, "task", str)
        examples = examples_of(body, "examples")
        if not examples or len(examples) > self.max_examples:
            raise BadRequest(f"a job needs 1 to {self.max_examples} examples")
        base = field(body, "base_model", str, None)
        route = None
        if base is not None:
            route = self.call(MMS, "route", {"model": base}, timeout=3.0)
        self.next_id += 1
        job_id = f"job-{self.next_id}"
        state = "deferred" if route and route["route"] == "remote" else "queued"
        self.jobs[job_id] = {"job": job_id, "task": task, "state": state, "examples": examples, "base_model": base,
                             "route": route, "result": None}
        self.counters[f"jobs_{state}"] += 1
        return {"job": job_id, "task": task, "state": state, "route": route, "examples": len(examples)}

    def _train(self, job: dict) -> dict:
        train, held = split_holdout(job["examples"], self.holdout_every)
        model = NaiveBayes().fit(train)
        acc = model.accuracy(held)
        self.models[job["job"]] = model
        job["state"] = "done"
        job["result"] = {"train": len(train), "held_out": len(held),
                         "accuracy": None if acc is None else round(acc, 4), "labels": model.labels,
                         "vocabulary": len(model.vocabulary)}
        self.counters["jobs_done"] += 1
        return job["result"]

    def handle_run(self, body: Any) -> dict:
        """{job?}: train that queued job, or every queued one; -> results per job."""
        job_id = field(body, "job", str, None) if isinstance(body, dict) else None
        todo = [self._job(job_id)] if job_id else [j for j in self.jobs.values() if j["state"] == "queued"]
        results = {}
        for job in todo:
            if job["state"] != "queued":
                raise BadRequest(f"{job['job']} is {job['state']}, not queued")
            results[job["job"]] = self._train(job)
        if results:
            self.report({"jobs_done": self.counters["jobs_done"],
                         "last_accuracy": next(reversed(results.values()))["accuracy"] or 0.0})
        return {"trained": results}

    def _job(self, job_id: str) -> dict:
        job = self.jobs.get(job_id)
        if job is None:
            raise BadRequest(f"no job {job_id!r}")
        return job

    def handle_job(self, body: Any) -> dict:
        job = self._job(field(body, "job", str))
        return {k: v for k, v in job.items() if k != "examples"} | {"examples": len(job["examples"])}

    def handle_jobs(self, body: Any) -> list[dict]:
        return [{"job": j["job"], "task": j["task"], "state": j["state"]} for j in self.jobs.values()]

    def handle_predict(self, body: Any) -> dict:
        """{job, text} -> {label, confidence} from that job's trained model."""
        job_id = field(body, "job", str)
        model = self.models.get(job_id)
        if model is None:
            raise BadRequest(f"{job_id} has no trained model")
        label, confidence, _ = model.predict(field(body, "text", str))
        return {"job": job_id, "label": label, "confidence": round(confidence, 4)}


# ---- LearningOpportunityDetector -------------------------------------------------------------------------
class LearningOpportunityDetector(CatalogAgent):
    """Finds what is worth learning from the interactions, and asks for the training.

    Real: each observed interaction (a prediction, its confidence, the label a user gave if any) is
    appended to MemoryClient (namespace `interactions:<task>`), so nothing is lost with this agent;
    `detect` reads them back and counts the opportunities (corrections, low-confidence predictions),
    records the opportunity rate at SystemDigitalTwin (whose trend says whether things get worse), and
    once `min_corrections` corrections have piled up submits a training job to
    LearningOrchestrationService with the corrected and the confirmed examples. Stands in: nothing.
    """

    CAPABILITIES = ("learning.opportunities",)

    def setup(self) -> None:
        self.low_confidence = float(self.config.get("low_confidence", 0.6))
        self.min_corrections = int(self.config.get("min_corrections", 3))
        super().setup()

    def _kind(self, item: dict) -> str:
        if item.get("label") is not None and item["label"] != item["predicted"]:
            return "correction"
        if item["confidence"] < self.low_confidence:
            return "low_confidence"
        return "ok"

    def handle_observe(self, body: Any) -> dict:
        """{task, text, predicted, confidence, label?} -> {index, kind}."""
        task = field(body, "task", str)
        item = {"text": field(body, "text", str), "predicted": field(body, "predicted", str),
                "confidence": float(field(body, "confidence", float)), "label": field(body, "label", str, None)}
        stored = self.call(MEMORY, "append", {"ns": f"interactions:{task}", "value": item}, timeout=2.0)
        kind = self._kind(item)
        self.counters[f"observed_{kind}"] += 1
        return {"task": task, "index": stored["index"], "kind": kind}

    def handle_detect(self, body: Any) -> dict:
        """{task, submit?: true} -> opportunity counts, rate trend, and the training job submitted (if any)."""
        task = field(body, "task", str)
        items = [i["value"] for i in self.call(MEMORY, "list", {"ns": f"interactions:{task}"}, timeout=3.0)["items"]]
        kinds = Counter(self._kind(i) for i in items)
        rate = (kinds["correction"] + kinds["low_confidence"]) / len(items) if items else 0.0
        trend = self.call(TWIN, "observe", {"metric": f"learning.opportunity_rate.{task}", "value": round(rate, 4)},
                          timeout=2.0)
        out = {"task": task, "interactions": len(items), "opportunities": {k: kinds[k] for k in
               ("correction", "low_confidence")}, "rate": round(rate, 4), "trend": trend["trend"], "job": None}
        if kinds["correction"] >= self.min_corrections and field(body, "submit", bool, True):
            examples = [{"text": i["text"], "label": i["label"] if i.get("label") is not None else i["predicted"]}
                        for i in items if self._kind(i) != "low_confidence"]
            job = self.call(LOS, "submit", {"task": task, "examples": examples}, timeout=5.0)
            out["job"] = job["job"]
            out["examples"] = len(examples)
            self.counters["jobs_submitted"] += 1
        return out


# ---- LearningManager -------------------------------------------------------------------------------------
def bkt_update(p: float, correct: bool, transit: float, slip: float, guess: float) -> float:
    """Bayesian knowledge tracing: the posterior that a skill is known after one observed attempt,
    then the chance of learning it on the way."""
    if correct:
        post = p * (1 - slip) / (p * (1 - slip) + (1 - p) * guess)
    else:
        post = p * slip / (p * slip + (1 - p) * (1 - guess))
    return post + (1 - post) * transit


class LearningManager(CatalogAgent):
    """Skill mastery and weakly labelled data.

    Real: `record` updates each (learner, skill) mastery by Bayesian knowledge tracing (`p_init`,
    `p_transit`, `p_slip`, `p_guess`) and keeps it in MemoryClient (namespace `mastery`), so progress
    survives restarts; `label` pseudo-labels texts with RequestCoordinator's classifier and says how sure
    each label is (confidence, and the margin between the two best intents). Stands in: nothing.
    """

    CAPABILITIES = ("learning.mastery", "learning.labels")

    def setup(self) -> None:
        self.p_init = float(self.config.get("p_init", 0.2))
        self.transit = float(self.config.get("p_transit", 0.15))
        self.slip = float(self.config.get("p_slip", 0.1))
        self.guess = float(self.config.get("p_guess", 0.2))
        self.mastered_at = float(self.config.get("mastered_at", 0.95))
        super().setup()

    def handle_record(self, body: Any) -> dict:
        """{skill, correct, learner?} -> {mastery, attempts, mastered}."""
        learner, skill = field(body, "learner", str, "default"), field(body, "skill", str)
        correct = field(body, "correct", bool)
        key = f"{learner}/{skill}"
        got = self.call(MEMORY, "get", {"ns": "mastery", "key": key}, timeout=2.0)
        state = got["value"] if got["found"] else {"p": self.p_init, "attempts": 0, "correct": 0}
        state["p"] = bkt_update(state["p"], correct, self.transit, self.slip, self.guess)
        state["attempts"] += 1
        state["correct"] += int(correct)
        self.call(MEMORY, "put", {"ns": "mastery", "key": key, "value": state}, timeout=2.0)
        self.counters["attempts"] += 1
        return {"learner": learner, "skill": skill, "mastery": round(state["p"], 4), "attempts": state["attempts"],
                "mastered": state["p"] >= self.mastered_at}

    def handle_progress(self, body: Any) -> dict:
        """{learner?} -> every skill's mastery, weakest first."""
        learner = field(body, "learner", str, "default") if isinstance(body, dict) else "default"
        items = self.call(MEMORY, "list", {"ns": "mastery", "prefix": f"{learner}/"}, timeout=2.0)["items"]
        skills = sorted(({"skill": i["key"].split("/", 1)[1], "mastery": round(i["value"]["p"], 4),
                          "attempts": i["value"]["attempts"]} for i in items), key=lambda s: (s["mastery"], s["skill"]))
        return {"learner": learner, "skills": skills,
                "mastered": [s["skill"] for s in skills if s["mastery"] >= self.mastered_at]}

    def handle_label(self, body: Any) -> dict:
        """{texts} -> [{text, label, confidence, margin}]: RequestCoordinator's intents as weak labels."""
        out = []
        for text in texts_of(body, "texts"):
            c = self.call(RC, "classify", {"text": text}, timeout=2.0)
            scores = sorted(c.get("scores", {}).values(), reverse=True)
            total = sum(scores) or 1.0
            margin = (scores[0] - (scores[1] if len(scores) > 1 else 0.0)) / total if scores else 0.0
            out.append({"text": text, "label": c["intent"], "confidence": c["confidence"], "margin": round(margin, 4)})
        self.counters["labelled"] += len(out)
        return {"labels": out}


# ---- ActiveLearningMonitor -------------------------------------------------------------------------------
class ActiveLearningMonitor(CatalogAgent):
    """Chooses what to ask a human to label, and watches how uncertain the system is.

    Real: uncertainty sampling: LearningManager labels a pool of texts, and the `k` with the smallest
    margin between the two best labels (unknowns first) are the queries; each batch's mean uncertainty
    is recorded at SystemDigitalTwin, and `status` flags drift when the latest batch is more uncertain
    than the first ones by more than `drift_delta` (and reports it to ObservabilityHub).
    Stands in: nothing.
    """

    CAPABILITIES = ("learning.active", "learning.uncertainty")

    def setup(self) -> None:
        self.batches: list[float] = []
        self.drift_delta = float(self.config.get("drift_delta", 0.2))
        super().setup()

    def handle_select(self, body: Any) -> dict:
        """{texts, k?} -> {queries: the k most uncertain texts, uncertainty per text, mean}."""
        texts = texts_of(body, "texts")
        if not texts:
            raise BadRequest("texts must not be empty")
        k = field(body, "k", int, 3)
        labels = self.call(MANAGER, "label", {"texts": texts}, timeout=5.0)["labels"]
        scored = [{"text": x["text"], "label": x["label"],
                   "uncertainty": 1.0 if x["label"] == "unknown" else round(1.0 - x["margin"], 4)} for x in labels]
        ranked = sorted(scored, key=lambda x: (-x["uncertainty"], x["text"]))
        mean = round(sum(x["uncertainty"] for x in scored) / len(scored), 4)
        self.batches.append(mean)
        self.call(TWIN, "observe", {"metric": f"{self.name}.uncertainty", "value": mean}, timeout=2.0)
        self.counters["batches"] += 1
        return {"queries": [x["text"] for x in ranked[:k]], "scored": ranked, "mean_uncertainty": mean}

    def handle_status(self, body: Any) -> dict:
        if not self.batches:
            return {"batches": 0, "drift": False}
        baseline = sum(self.batches[:3]) / len(self.batches[:3])
        drift = self.batches[-1] - baseline > self.drift_delta
        self.report({"mean_uncertainty": self.batches[-1], "drift": int(drift)})
        return {"batches": len(self.batches), "baseline": round(baseline, 4), "latest": self.batches[-1],
                "drift": drift}


# ---- SelfTrainingOrchestrator ----------------------------------------------------------------------------
class SelfTrainingOrchestrator(CatalogAgent):
    """Self-training: learns from a few labels and many unlabelled texts.

    Real: trains naive Bayes on the labelled seeds, pseudo-labels the unlabelled texts it is at least
    `threshold` sure of, retrains with them, and repeats until nothing new passes (or `max_rounds`);
    evaluates on a validation set when given; keeps named models, each registered (by its size in MiB,
    at least 1) as a pinned model in ModelManagerSuite and admitted by SystemDigitalTwin; `export`
    hands a model's counts to LocalFineTunerAgent. Stands in: word counts for a network's weights.
    """

    CAPABILITIES = ("learning.self_training", "learning.models")

    def setup(self) -> None:
        self.models: dict[str, NaiveBayes] = {}
        self.threshold = float(self.config.get("threshold", 0.8))
        self.max_rounds = int(self.config.get("max_rounds", 5))
        super().setup()

    def _model(self, body: Any) -> tuple[str, NaiveBayes]:
        name = field(body, "name", str)
        if name not in self.models:
            raise BadRequest(f"no model {name!r} (models: {', '.join(sorted(self.models)) or 'none'})")
        return name, self.models[name]

    def handle_train(self, body: Any) -> dict:
        """{name, labeled: [{text, label}], unlabeled: [text], threshold?, max_rounds?, validation?, store?}
        -> rounds, pseudo-labels, validation accuracy (before and after self-training)."""
        name = field(body, "name", str)
        labeled = examples_of(body, "labeled")
        if not labeled:
            raise BadRequest("labeled must not be empty")
        pool = list(dict.fromkeys(texts_of(body, "unlabeled")))
        threshold = field(body, "threshold", float, self.threshold)
        validation = examples_of(body, "validation", required=False)
        model = NaiveBayes().fit(labeled)
        seed_accuracy = model.accuracy(validation)
        pseudo: dict[str, str] = {}
        rounds = []
        for _ in range(field(body, "max_rounds", int, self.max_rounds)):
            picked = []
            for text in pool:
                label, confidence, _ = model.predict(text)
                if confidence >= threshold:
                    picked.append((text, label))
            if not picked:
                break
            pseudo.update(picked)
            pool = [t for t in pool if t not in pseudo]
            model = NaiveBayes().fit(labeled + list(pseudo.items()))
            rounds.append({"round": len(rounds) + 1, "added": len(picked), "remaining": len(pool)})
        acc = model.accuracy(validation)
        out = {"name": name, "rounds": rounds, "pseudo_labels": dict(sorted(pseudo.items())), "unlabeled_left": pool,
               "labels": model.labels, "threshold": threshold,
               "seed_accuracy": None if seed_accuracy is None else round(seed_accuracy, 4),
               "accuracy": None if acc is None else round(acc, 4)}
        if field(body, "store", bool, True):
            mb = max(1, round(model.size_bytes() / 1048576))
            fit = self.call(TWIN, "can_fit", {"mb": mb}, timeout=2.0)
            if not fit["fits"]:
                raise AgentError(f"model {name} ({mb} MB) does not fit on the host")
            self.call(MMS, "register_model", {"model": f"self-trained/{name}", "mb": mb, "owner": self.name},
                      timeout=3.0)
            self.models[name] = model
            out["model"] = f"self-trained/{name}"
        self.counters["trainings"] += 1
        return out

    def handle_predict(self, body: Any) -> dict:
        name, model = self._model(body)
        label, confidence, margin = model.predict(field(body, "text", str))
        return {"name": name, "label": label, "confidence": round(confidence, 4), "margin": round(margin, 4)}

    def handle_evaluate(self, body: Any) -> dict:
        name, model = self._model(body)
        examples = examples_of(body, "examples")
        return {"name": name, "accuracy": round(model.accuracy(examples) or 0.0, 4), "examples": len(examples)}

    def handle_export(self, body: Any) -> dict:
        name, model = self._model(body)
        return {"name": name, "model": model.to_dict()}

    def handle_models(self, body: Any) -> dict:
        return {n: {"labels": m.labels, "vocabulary": len(m.vocabulary)} for n, m in sorted(self.models.items())}


# ---- LocalFineTunerAgent ---------------------------------------------------------------------------------
class LocalFineTunerAgent(CatalogAgent):
    """Fine-tunes a self-trained model locally with an adapter.

    Real: takes a base model's counts from SelfTrainingOrchestrator, trains an adapter (the new
    examples' word counts, scaled by `weight`) that is added to the base at prediction time, leaving the base
    untouched, and measures accuracy on an evaluation set before and after; the adapter's size is
    admitted by SystemDigitalTwin. Stands in: weighted count deltas for low-rank weight deltas (LoRA).
    """

    CAPABILITIES = ("learning.fine_tune", "learning.adapters")

    def setup(self) -> None:
        self.adapters: dict[str, dict] = {}
        self.weight = float(self.config.get("weight", 3.0))
        super().setup()

    @staticmethod
    def _merged(base: dict, adapter: NaiveBayes) -> NaiveBayes:
        model = NaiveBayes.from_dict(base)
        for label, n in adapter.docs.items():
            model.docs[label] += n
        for label, counts in adapter.words.items():
            model.words.setdefault(label, Counter()).update(counts)
        return model

    def handle_finetune(self, body: Any) -> dict:
        """{base, examples: [{text, label}], eval?: [...], weight?, name?} -> accuracy before and after."""
        base_name = field(body, "base", str)
        examples = examples_of(body, "examples")
        evaluation = examples_of(body, "eval", required=False)
        weight = field(body, "weight", float, self.weight)
        base = self.call(STO, "export", {"name": base_name}, timeout=5.0)["model"]
        adapter = NaiveBayes().fit(examples, weight)
        fit = self.call(TWIN, "can_fit", {"mb": max(1, adapter.size_bytes() >> 20)}, timeout=2.0)
        if not fit["fits"]:
            raise AgentError("the adapter does not fit on the host")
        name = field(body, "name", str, f"{base_name}+ft")
        tuned = self._merged(base, adapter)
        before = NaiveBayes.from_dict(base).accuracy(evaluation)
        after = tuned.accuracy(evaluation)
        self.adapters[name] = {"base": base_name, "model": tuned, "examples": len(examples), "weight": weight}
        self.counters["finetunes"] += 1
        return {"name": name, "base": base_name, "examples": len(examples), "weight": weight,
                "labels": tuned.labels, "accuracy_before": None if before is None else round(before, 4),
                "accuracy_after": None if after is None else round(after, 4)}

    def handle_predict(self, body: Any) -> dict:
        name = field(body, "name", str)
        entry = self.adapters.get(name)
        if entry is None:
            raise BadRequest(f"no fine-tuned model {name!r}")
        label, confidence, _ = entry["model"].predict(field(body, "text", str))
        return {"name": name, "label": label, "confidence": round(confidence, 4)}

    def handle_adapters(self, body: Any) -> dict:
        return {n: {"base": a["base"], "examples": a["examples"], "weight": a["weight"]}
                for n, a in sorted(self.adapters.items())}


# ---- LearningAdjusterAgent -------------------------------------------------------------------------------
class LearningAdjusterAgent(CatalogAgent):
    """Adjusts learning hyperparameters from results.

    Real: `tune` searches SelfTrainingOrchestrator's pseudo-label threshold: one self-training run per
    candidate, scored on a validation set, the best kept (ties go to the higher, more cautious
    threshold); `adjust` is reduce-on-plateau for a learning rate: SystemDigitalTwin fits a trend to the
    last `patience` scores and the rate is multiplied by `factor` when it no longer improves by
    `min_delta` per step. Stands in: nothing.
    """

    CAPABILITIES = ("learning.hyperparameters",)

    def setup(self) -> None:
        self.patience = int(self.config.get("patience", 3))
        self.factor = float(self.config.get("factor", 0.5))
        self.min_delta = float(self.config.get("min_delta", 0.005))
        self.min_lr = float(self.config.get("min_lr", 1e-5))
        super().setup()

    def handle_tune(self, body: Any) -> dict:
        """{labeled, unlabeled, validation, thresholds?} -> every candidate's accuracy, and the best."""
        thresholds = field(body, "thresholds", list, [0.6, 0.7, 0.8, 0.9, 0.95])
        if not thresholds or not all(isinstance(t, (int, float)) and 0 < t <= 1 for t in thresholds):
            raise BadRequest("thresholds must be numbers in (0, 1]")
        validation = field(body, "validation", list)
        if not validation:
            raise BadRequest("validation must not be empty")
        table = []
        for t in sorted(set(float(x) for x in thresholds)):
            r = self.call(STO, "train", {"name": f"tune-{t:g}", "labeled": field(body, "labeled", list),
                                         "unlabeled": field(body, "unlabeled", list, []), "validation": validation,
                                         "threshold": t, "store": False}, timeout=10.0)
            table.append({"threshold": t, "accuracy": r["accuracy"], "pseudo_labels": len(r["pseudo_labels"])})
        best = max(table, key=lambda row: (row["accuracy"], row["threshold"]))
        self.counters["tunings"] += 1
        return {"candidates": table, "best": best}

    def handle_adjust(self, body: Any) -> dict:
        """{scores: [validation scores, oldest first], lr} -> {lr, reduced, slope}."""
        scores = field(body, "scores", list)
        lr = field(body, "lr", float)
        if len(scores) < self.patience:
            return {"lr": lr, "reduced": False, "slope": None, "reason": f"fewer than {self.patience} scores"}
        trend = self.call(TWIN, "predict", {"series": scores[-self.patience:]}, timeout=2.0)
        plateau = trend["slope"] < self.min_delta
        new_lr = max(self.min_lr, lr * self.factor) if plateau else lr
        self.counters["reductions"] += new_lr < lr
        reason = f"slope {trend['slope']:g} below {self.min_delta:g}" if plateau else "still improving"
        return {"lr": new_lr, "reduced": new_lr < lr, "slope": trend["slope"], "reason": reason}
