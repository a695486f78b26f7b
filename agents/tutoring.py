"""Reference agents of the tutoring group: TutorAgent, TutoringAgent.

Both keep what they know about each student in MemoryOrchestratorService, so a restart (or an idle stop
of these lazy agents) loses no progress: TutorAgent the student model (mastery per skill), TutoringAgent
the lessons started and passed.
"""
from __future__ import annotations

import random
import re
import zlib
from typing import Any

from sunsetd.agent import BadRequest

from agents.infrastructure import field
from agents.pc2_core import MOS, EdgeAgent

# ---- TutorAgent ------------------------------------------------------------------------------------------
SKILLS = ("addition", "subtraction", "multiplication", "division")
LEVELS = 10


def make_problem(skill: str, level: int, rng: random.Random) -> tuple[str, int]:
    """An arithmetic problem of a skill at a difficulty level 1..10 (operands grow with the level)."""
    hi = (5, 9, 12, 20, 30, 50, 99, 150, 500, 999)[level - 1]
    a, b = rng.randint(max(1, hi // 4), hi), rng.randint(1, hi)
    if skill == "addition":
        return f"{a} + {b}", a + b
    if skill == "subtraction":
        a, b = max(a, b), min(a, b)
        return f"{a} - {b}", a - b
    small = (3, 5, 6, 9, 10, 12, 12, 15, 20, 25)[level - 1]
    a, b = rng.randint(2, small), rng.randint(2, small + level)
    if skill == "multiplication":
        return f"{a} × {b}", a * b
    return f"{a * b} ÷ {a}", b  # division: always exact


def bkt_update(p: float, correct: bool, learn: float, slip: float, guess: float) -> float:
    """Bayesian knowledge tracing: the posterior that the skill is known given the answer, then learning."""
    if correct:
        post = p * (1 - slip) / (p * (1 - slip) + (1 - p) * guess)
    else:
        post = p * slip / (p * slip + (1 - p) * (1 - guess))
    return post + (1 - post) * learn


class TutorAgent(EdgeAgent):
    """Student model and adaptive difficulty for arithmetic practice.

    Real: a student model per skill by Bayesian knowledge tracing (prior, learn, slip and guess rates),
    the difficulty of the next problem (1..10) following the estimated mastery, problems drawn from a
    generator seeded by the student, skill and problem number (the same student gets the same sequence),
    answers checked and the model updated, mastery declared at `mastery` (0.95); models are kept in
    MemoryOrchestratorService (namespace `tutor:students`). Stands in: knowledge tracing stands in for a
    learned student model.
    """

    CAPABILITIES = ("tutoring.student_model", "tutoring.practice")
    NS = "tutor:students"

    def setup(self) -> None:
        self.prior = float(self.config.get("prior", 0.2))
        self.learn = float(self.config.get("learn", 0.15))
        self.slip = float(self.config.get("slip", 0.1))
        self.guess = float(self.config.get("guess", 0.2))
        self.mastery = float(self.config.get("mastery", 0.95))
        super().setup()

    def _load(self, student: str) -> dict:
        got = self.call(MOS, "get", {"ns": self.NS, "key": student}, timeout=2.0)
        if got["found"]:
            return got["value"]
        return {"skills": {s: {"p": self.prior, "answered": 0, "correct": 0, "streak": 0} for s in SKILLS},
                "problems": 0, "pending": None}

    def _save(self, student: str, model: dict) -> None:
        self.call(MOS, "put", {"ns": self.NS, "key": student, "value": model}, timeout=2.0)

    def _level(self, p: float) -> int:
        return max(1, min(LEVELS, 1 + int(p * LEVELS)))

    @staticmethod
    def _student(body: Any) -> str:
        student = field(body, "student", str)
        if not re.fullmatch(r"[\w.-]{1,64}", student):
            raise BadRequest("student must be 1..64 letters, digits, _ . -")
        return student

    def handle_next(self, body: Any) -> dict:
        """{student, skill?} -> a problem at the student's level (the weakest skill when none is named)."""
        student = self._student(body)
        model = self._load(student)
        skill = field(body, "skill", str, None) or min(SKILLS, key=lambda s: (model["skills"][s]["p"], SKILLS.index(s)))
        if skill not in SKILLS:
            raise BadRequest(f"skill must be one of {', '.join(SKILLS)}")
        level = self._level(model["skills"][skill]["p"])
        model["problems"] += 1
        rng = random.Random(zlib.crc32(f"{student}|{skill}|{model['problems']}".encode()))
        question, answer = make_problem(skill, level, rng)
        pid = f"{student}-{model['problems']}"
        model["pending"] = {"id": pid, "skill": skill, "level": level, "question": question, "answer": answer}
        self._save(student, model)
        self.counters["problems"] += 1
        return {"id": pid, "skill": skill, "level": level, "question": question}

    def handle_answer(self, body: Any) -> dict:
        """{student, id, answer} -> correct?, the expected answer, updated mastery and next level."""
        student = self._student(body)
        pid = field(body, "id", str)
        given = field(body, "answer", (int, float, str))
        model = self._load(student)
        pending = model.get("pending")
        if not pending or pending["id"] != pid:
            raise BadRequest(f"problem {pid!r} is not the one pending for {student}")
        try:
            value = float(str(given).strip())
        except ValueError:
            value = None
        correct = value is not None and value == pending["answer"]
        s = model["skills"][pending["skill"]]
        before = s["p"]
        s["p"] = round(bkt_update(s["p"], correct, self.learn, self.slip, self.guess), 6)
        s["answered"] += 1
        s["correct"] += correct
        s["streak"] = s["streak"] + 1 if correct else 0
        model["pending"] = None
        self._save(student, model)
        self.counters["correct" if correct else "wrong"] += 1
        return {"id": pid, "correct": correct, "expected": pending["answer"], "skill": pending["skill"],
                "mastery_before": round(before, 4), "mastery": round(s["p"], 4), "next_level": self._level(s["p"]),
                "mastered": s["p"] >= self.mastery}

    def handle_model(self, body: Any) -> dict:
        """{student} -> per skill: mastery, level, answered, correct, streak, mastered."""
        student = self._student(body)
        model = self._load(student)
        return {"student": student, "problems": model["problems"], "skills": {
            k: {**v, "p": round(v["p"], 4), "level": self._level(v["p"]), "mastered": v["p"] >= self.mastery}
            for k, v in model["skills"].items()}}

    def handle_reset(self, body: Any) -> dict:
        student = self._student(body)
        return {"student": student, "deleted": self.call(MOS, "delete", {"ns": self.NS, "key": student},
                                                          timeout=2.0)["deleted"]}


# ---- TutoringAgent ---------------------------------------------------------------------------------------
CURRICULUM: list[dict] = [
    {"id": "fractions-1", "title": "What a fraction is", "requires": [], "sections": [
        "A fraction names a part of a whole: the denominator says into how many equal parts the whole is cut.",
        "The numerator says how many of those parts we take: 3/4 is three of four equal parts.",
        "Fractions with the same denominator add by adding numerators: 1/5 + 2/5 = 3/5."],
     "quiz": [{"q": "In 3/8, what is the denominator?", "a": ["8", "eight"]},
              {"q": "What is 1/5 + 2/5?", "a": ["3/5"]},
              {"q": "How many quarters make a whole?", "a": ["4", "four"]}]},
    {"id": "fractions-2", "title": "Equivalent fractions", "requires": ["fractions-1"], "sections": [
        "Multiplying numerator and denominator by the same number gives an equal fraction: 1/2 = 2/4 = 3/6.",
        "Dividing both by a common factor simplifies: 6/8 = 3/4."],
     "quiz": [{"q": "Simplify 6/8.", "a": ["3/4"]},
              {"q": "Complete: 1/3 = ?/9", "a": ["3"]}]},
    {"id": "decimals-1", "title": "Decimals", "requires": ["fractions-1"], "sections": [
        "A decimal is a fraction whose denominator is a power of ten: 0.7 is 7/10.",
        "Each place to the right is ten times smaller: 0.25 is 2 tenths and 5 hundredths."],
     "quiz": [{"q": "Write 7/10 as a decimal.", "a": ["0.7", ".7"]},
              {"q": "Write 0.25 as a fraction in lowest terms.", "a": ["1/4"]}]},
]


def normalize_answer(text: Any) -> str:
    """Lower case, no surrounding punctuation or spaces; numbers in one form (0.70 -> 0.7, .7 -> 0.7)."""
    s = re.sub(r"\s+", " ", str(text).strip().lower()).rstrip(" .!?")
    try:
        f = float(s)
        return str(int(f)) if f.is_integer() else repr(f)
    except ValueError:
        return s


class TutoringAgent(EdgeAgent):
    """Lessons: a curriculum with prerequisites, sections taught in order, and graded quizzes.

    Real: the curriculum (built in, extended by `config.lessons`), prerequisites that lock a lesson until
    the lessons it requires are passed, progress per student (section reached, attempts, best score,
    passed) kept in MemoryOrchestratorService (namespace `tutoring:progress`), quizzes graded against
    accepted answers after normalisation (case, punctuation, number forms) with a pass mark
    (`pass_mark`, 0.7). Stands in: the fixed lesson texts stand in for generated explanations.
    """

    CAPABILITIES = ("tutoring.lessons", "tutoring.quiz")
    NS = "tutoring:progress"

    def setup(self) -> None:
        self.lessons = {l["id"]: l for l in CURRICULUM + list(self.config.get("lessons") or [])}
        for lesson in self.lessons.values():
            missing = [r for r in lesson.get("requires", []) if r not in self.lessons]
            if missing:
                raise ValueError(f"lesson {lesson['id']} requires unknown lessons {missing}")
        self.pass_mark = float(self.config.get("pass_mark", 0.7))
        super().setup()

    def _progress(self, student: str) -> dict:
        got = self.call(MOS, "get", {"ns": self.NS, "key": student}, timeout=2.0)
        return got["value"] if got["found"] else {}

    def _save(self, student: str, progress: dict) -> None:
        self.call(MOS, "put", {"ns": self.NS, "key": student, "value": progress}, timeout=2.0)

    def _lesson(self, body: Any) -> dict:
        lid = field(body, "lesson", str)
        if lid not in self.lessons:
            raise BadRequest(f"no lesson {lid!r} (lessons: {', '.join(self.lessons)})")
        return self.lessons[lid]

    def _status(self, lesson: dict, progress: dict) -> str:
        p = progress.get(lesson["id"])
        if p and p.get("passed"):
            return "passed"
        if any(not progress.get(r, {}).get("passed") for r in lesson.get("requires", [])):
            return "locked"
        return "in_progress" if p else "available"

    def handle_lessons(self, body: Any) -> dict:
        """{student?} -> the curriculum, with each lesson's status for that student."""
        student = field(body, "student", str, None) if isinstance(body, dict) else None
        progress = self._progress(student) if student else {}
        return {"lessons": [{"id": l["id"], "title": l["title"], "requires": l.get("requires", []),
                             "sections": len(l["sections"]), "questions": len(l["quiz"]),
                             **({"status": self._status(l, progress)} if student else {})}
                            for l in self.lessons.values()]}

    def handle_next(self, body: Any) -> dict:
        """{student, lesson}: the next section of the lesson; after the last, the quiz questions."""
        student, lesson = field(body, "student", str), self._lesson(body)
        progress = self._progress(student)
        status = self._status(lesson, progress)
        if status == "locked":
            missing = [r for r in lesson["requires"] if not progress.get(r, {}).get("passed")]
            raise BadRequest(f"{lesson['id']} is locked for {student}: pass {', '.join(missing)} first")
        p = progress.setdefault(lesson["id"], {"section": 0, "attempts": 0, "best": 0.0, "passed": False})
        if p["section"] < len(lesson["sections"]):
            text = lesson["sections"][p["section"]]
            p["section"] += 1
            self._save(student, progress)
            return {"lesson": lesson["id"], "section": p["section"], "of": len(lesson["sections"]), "text": text}
        return {"lesson": lesson["id"], "quiz": [q["q"] for q in lesson["quiz"]]}

    def handle_submit(self, body: Any) -> dict:
        """{student, lesson, answers: [...]}: grade the quiz; passing unlocks the lessons that require this one."""
        student, lesson = field(body, "student", str), self._lesson(body)
        answers = field(body, "answers", list)
        progress = self._progress(student)
        p = progress.get(lesson["id"])
        if p is None or p["section"] < len(lesson["sections"]):
            raise BadRequest(f"{student} has not finished the sections of {lesson['id']}")
        if len(answers) != len(lesson["quiz"]):
            raise BadRequest(f"{lesson['id']} has {len(lesson['quiz'])} questions, got {len(answers)} answers")
        marks = [normalize_answer(a) in {normalize_answer(x) for x in q["a"]} for a, q in zip(answers, lesson["quiz"])]
        score = round(sum(marks) / len(marks), 3)
        p["attempts"] += 1
        p["best"] = max(p["best"], score)
        newly = score >= self.pass_mark and not p["passed"]
        p["passed"] = p["passed"] or score >= self.pass_mark
        self._save(student, progress)
        unlocked = [l["id"] for l in self.lessons.values() if newly and lesson["id"] in l.get("requires", [])
                    and self._status(l, progress) == "available"]
        self.counters["passed" if score >= self.pass_mark else "failed"] += 1
        return {"lesson": lesson["id"], "marks": marks, "score": score, "passed": p["passed"],
                "attempts": p["attempts"], "unlocked": unlocked,
                "corrections": {i: q["a"][0] for i, (m, q) in enumerate(zip(marks, lesson["quiz"])) if not m}}

    def handle_progress(self, body: Any) -> dict:
        student = field(body, "student", str)
        return {"student": student, "progress": self._progress(student)}
