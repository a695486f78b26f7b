"""Reference agents of the language group: NLUAgent, AdvancedCommandHandler, ChitchatAgent, FeedbackHandler,
Responder, TranslationService, DynamicIdentityAgent.

Language is handled with rules and tables: intents by weighted patterns, entities by regular
expressions (numbers, durations, clock times, dates, languages, people, places, quoted text, e-mail
addresses, URLs), sentiment from the emotion lexicon, translation with a small built-in bilingual
lexicon and phrase table (English with Spanish, French and German: longest phrase first, determiner
and adjective agreement, adjective placement, pivoting through English between the others). What stands
in is the model: tables and rules replace trained NLU and translation networks.

The translation tables and `translate` are also used by the utility group's FixedStreamingTranslation
and NLLBAdapter (imported, not called: those agents do not depend on TranslationService).
"""
from __future__ import annotations

import re
from typing import Any

from sunsetd.agent import AgentError, BadRequest

from agents.emotion import analyze_text
from agents.infrastructure import TWIN, CatalogAgent, field
from agents.speech import ModelBacked

NLU = "NLUAgent"
CODEGEN = "CodeGenerator"
ENGINE = "EmotionEngine"
FACES = "FaceRecognitionAgent"
STREAMING_TTS = "StreamingTTSAgent"
TTS = "TTSService"
RC = "RequestCoordinator"

# ---- translation tables ----------------------------------------------------------------------------------
LANGUAGES = {"en": "English", "es": "Spanish", "fr": "French", "de": "German"}
LANGUAGE_NAMES = {"english": "en", "spanish": "es", "espanol": "es", "castilian": "es", "french": "fr",
                  "francais": "fr", "german": "de", "deutsch": "de"}
# en  pos  es  fr  de; nouns carry their gender (/m /f /n); '_' joins the words of one entry
_TABLE = """
the det el le der
a det un un ein
an det un un ein
my det mi mon mein
your det tu ton dein
this det este ce dieser
house n casa/f maison/f Haus/n
car n coche/m voiture/f Auto/n
dog n perro/m chien/m Hund/m
cat n gato/m chat/m Katze/f
book n libro/m livre/m Buch/n
water n agua/f eau/f Wasser/n
friend n amigo/m ami/m Freund/m
man n hombre/m homme/m Mann/m
woman n mujer/f femme/f Frau/f
child n niño/m enfant/m Kind/n
city n ciudad/f ville/f Stadt/f
day n día/m jour/m Tag/m
night n noche/f nuit/f Nacht/f
tomorrow adv mañana demain morgen
morning n mañana/f matin/m Morgen/m
time n tiempo/m temps/m Zeit/f
weather n clima/m météo/f Wetter/n
world n mundo/m monde/m Welt/f
food n comida/f nourriture/f Essen/n
bread n pan/m pain/m Brot/n
coffee n café/m café/m Kaffee/m
tea n té/m thé/m Tee/m
table n mesa/f table/f Tisch/m
door n puerta/f porte/f Tür/f
window n ventana/f fenêtre/f Fenster/n
school n escuela/f école/f Schule/f
music n música/f musique/f Musik/f
name n nombre/m nom/m Name/m
family n familia/f famille/f Familie/f
mother n madre/f mère/f Mutter/f
father n padre/m père/m Vater/m
sun n sol/m soleil/m Sonne/f
moon n luna/f lune/f Mond/m
street n calle/f rue/f Straße/f
train n tren/m train/m Zug/m
computer n ordenador/m ordinateur/m Computer/m
language n idioma/m langue/f Sprache/f
question n pregunta/f question/f Frage/f
answer n respuesta/f réponse/f Antwort/f
big adj grande grand groß
small adj pequeño petit klein
red adj rojo rouge rot
blue adj azul bleu blau
green adj verde vert grün
white adj blanco blanc weiß
black adj negro noir schwarz
good adj bueno bon gut
bad adj malo mauvais schlecht
new adj nuevo nouveau neu
old adj viejo vieux alt
beautiful adj hermoso beau schön
happy adj feliz heureux glücklich
hot adj caliente chaud heiß
cold adj frío froid kalt
fast adj rápido rapide schnell
slow adj lento lent langsam
i pron yo je ich
you pron tú tu du
he pron él il er
she pron ella elle sie
we pron nosotros nous wir
they pron ellos ils sie
is v es est ist
am v soy suis bin
are v son sont sind
has v tiene a hat
eat v comer manger essen
drink v beber boire trinken
go v ir aller gehen
see v ver voir sehen
speak v hablar parler sprechen
read v leer lire lesen
write v escribir écrire schreiben
love v amo aime liebe
want v quiero veux will
and conj y et und
or conj o ou oder
not adv no pas nicht
with prep con avec mit
without prep sin sans ohne
in prep en dans in
on prep sobre sur auf
to prep a à zu
from prep de de von
of prep de de von
very adv muy très sehr
yes adv sí oui ja
no adv no non nein
please adv por_favor s'il_vous_plaît bitte
thanks adv gracias merci danke
today adv hoy aujourd'hui heute
yesterday adv ayer hier gestern
now adv ahora maintenant jetzt
here adv aquí ici hier
there adv allí là dort
where adv dónde où wo
what pron qué quoi was
who pron quién qui wer
how adv cómo comment wie
why adv por_qué pourquoi warum
when adv cuándo quand wann
one num uno un eins
two num dos deux zwei
three num tres trois drei
hello intj hola bonjour hallo
goodbye intj adiós au_revoir auf_Wiedersehen
"""
_PHRASES = """
good morning|buenos_días|bonjour|guten_Morgen
good afternoon|buenas_tardes|bon_après-midi|guten_Tag
good evening|buenas_noches|bonsoir|guten_Abend
good night|buenas_noches|bonne_nuit|gute_Nacht
thank you very much|muchas_gracias|merci_beaucoup|vielen_Dank
thank you|gracias|merci|danke
how are you|cómo_estás|comment_vas-tu|wie_geht_es_dir
see you later|hasta_luego|à_plus_tard|bis_später
i love you|te_quiero|je_t'aime|ich_liebe_dich
excuse me|perdón|excusez-moi|Entschuldigung
you are welcome|de_nada|de_rien|gern_geschehen
you're welcome|de_nada|de_rien|gern_geschehen
my name is|me_llamo|je_m'appelle|ich_heiße
what time is it|qué_hora_es|quelle_heure_est-il|wie_spät_ist_es
i don't understand|no_entiendo|je_ne_comprends_pas|ich_verstehe_nicht
i am|yo_soy|je_suis|ich_bin
you are|tú_eres|tu_es|du_bist
we are|somos|nous_sommes|wir_sind
i have|tengo|j'ai|ich_habe
i want|quiero|je_veux|ich_will
where is|dónde_está|où_est|wo_ist
"""
DETERMINERS = {  # en determiner -> language -> gender -> form
    "the": {"es": {"m": "el", "f": "la"}, "fr": {"m": "le", "f": "la"}, "de": {"m": "der", "f": "die", "n": "das"}},
    "a": {"es": {"m": "un", "f": "una"}, "fr": {"m": "un", "f": "une"}, "de": {"m": "ein", "f": "eine", "n": "ein"}},
    "my": {"es": {"m": "mi", "f": "mi"}, "fr": {"m": "mon", "f": "ma"}, "de": {"m": "mein", "f": "meine", "n": "mein"}},
    "your": {"es": {"m": "tu", "f": "tu"}, "fr": {"m": "ton", "f": "ta"},
             "de": {"m": "dein", "f": "deine", "n": "dein"}},
    "this": {"es": {"m": "este", "f": "esta"}, "fr": {"m": "ce", "f": "cette"},
             "de": {"m": "dieser", "f": "diese", "n": "dieses"}},
}
DETERMINERS["an"] = DETERMINERS["a"]
FR_FEMININE = {"beau": "belle", "vieux": "vieille", "nouveau": "nouvelle", "bon": "bonne", "blanc": "blanche",
               "heureux": "heureuse", "gros": "grosse"}
FR_BEFORE_NOUN = {"beau", "vieux", "nouveau", "bon", "mauvais", "petit", "grand", "gros", "jeune", "joli"}


def _build_tables() -> tuple[dict, dict, dict, dict]:
    """(en -> lang -> entry, lang -> word -> en entry, phrases en -> lang, phrases lang -> en)."""
    lex: dict[str, dict[str, dict]] = {}
    rev: dict[str, dict[str, dict]] = {lang: {} for lang in LANGUAGES if lang != "en"}
    for line in _TABLE.strip().splitlines():
        en, pos, *targets = line.split()
        for lang, target in zip(("es", "fr", "de"), targets):
            word, _, gender = target.partition("/")
            entry = {"text": word.replace("_", " "), "pos": pos, "gender": gender or None}
            lex.setdefault(en, {})[lang] = entry
            forms = {word.replace("_", " ").lower()}
            if pos == "adj":
                forms |= {feminine(lang, word).lower()} | ({word.lower() + e for e in ("e", "er", "es", "en")}
                                                            if lang == "de" else set())
            if pos == "det":
                forms |= {f.lower() for f in DETERMINERS[en][lang].values()}
            if lang == "fr" and pos == "det" and en == "the":
                forms.add("l'")
            for form in forms:
                rev[lang].setdefault(form, {"text": en, "pos": pos, "gender": gender or None})
    phrases: dict[str, dict[str, str]] = {}
    rphrases: dict[str, dict[str, str]] = {lang: {} for lang in rev}
    for line in _PHRASES.strip().splitlines():
        en, *targets = line.split("|")
        for lang, target in zip(("es", "fr", "de"), targets):
            phrases.setdefault(en, {})[lang] = target.replace("_", " ")
            rphrases[lang].setdefault(target.replace("_", " ").lower(), en)
    return lex, rev, phrases, rphrases


def feminine(lang: str, adj: str) -> str:
    if lang == "es":
        return adj[:-1] + "a" if adj.endswith("o") else adj
    if lang == "fr":
        return FR_FEMININE.get(adj, adj if adj.endswith("e") else adj + "e")
    return adj


LEX, REVERSE, PHRASES, REVERSE_PHRASES = _build_tables()
VOCABULARY = {"en": set(LEX) | {w for p in PHRASES for w in p.split()}}
for _lang in REVERSE:
    VOCABULARY[_lang] = {w for form in REVERSE[_lang] for w in form.split()} | \
                        {w for p in REVERSE_PHRASES[_lang] for w in p.split()}
_TOKENS = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*|\d+(?:[.,]\d+)?|[^\w\s]", re.UNICODE)
MAX_PHRASE = 5


def tokenize(text: str) -> list[str]:
    return _TOKENS.findall(text.replace("’", "'"))


def detect_language(text: str) -> dict:
    """Language by how many of the text's words each vocabulary knows; ties go to English."""
    words = [t.lower() for t in tokenize(text) if t[0].isalpha()]
    scores = {lang: sum(1 for w in words if w in VOCABULARY[lang]) for lang in LANGUAGES}
    best = max(scores, key=lambda lang: (scores[lang], lang == "en"))
    confidence = round(scores[best] / len(words), 3) if words else 0.0
    return {"language": best if scores[best] else None, "confidence": confidence, "scores": scores}


def _lookup_phrase(words: list[str], i: int, table: dict, shortest: int = 2) -> tuple[str, int] | None:
    for n in range(min(MAX_PHRASE, len(words) - i), shortest - 1, -1):
        key = " ".join(w.lower() for w in words[i:i + n])
        if key in table:
            return key, n
    return None


def _word_item(tok: str, unknown: list[str]) -> dict:
    """A token with no entry in the tables: an unknown word (kept as it is, and noted), a number or
    punctuation."""
    if tok[0].isalpha():
        unknown.append(tok)
        return {"text": tok, "pos": "unknown", "src": tok}
    return {"text": tok, "pos": "num" if tok[0].isdigit() else "punct", "src": tok}


def _from_english(tokens: list[str], lang: str, last_gender: str | None = None) -> tuple[list[dict], list[str]]:
    """Items of the translation (text, pos, gender, src) and the unknown words; `last_gender` is the gender of
    the noun before these tokens (for a predicative adjective at their start)."""
    items, unknown, i = [], [], 0
    while i < len(tokens):
        tok = tokens[i]
        hit = _lookup_phrase(tokens, i, PHRASES)
        if hit:
            items.append({"text": PHRASES[hit[0]][lang], "pos": "phrase", "src": hit[0]})
            i += hit[1]
            continue
        low = tok.lower()
        entry = LEX.get(low, {}).get(lang)
        items.append({**entry, "src": low} if entry is not None else _word_item(tok, unknown))
        i += 1
    # agreement: determiners and adjectives take the gender of their noun (the next one, or the last one)
    for k, item in enumerate(items):
        if item["pos"] == "n":
            last_gender = item["gender"]
            continue
        if item["pos"] not in ("det", "adj"):
            continue
        noun = next((x for x in items[k + 1:k + 4] if x["pos"] == "n"), None)
        attributive = noun is not None and all(x["pos"] in ("adj", "adv") for x in items[k + 1:items.index(noun)])
        gender = noun["gender"] if attributive else last_gender
        if item["pos"] == "det":
            forms = DETERMINERS[item["src"]][lang]
            item["text"] = forms.get(gender or "m", forms["m"])
        elif gender == "f":
            item["text"] = feminine(lang, item["text"])
        if lang == "de" and item["pos"] == "adj" and attributive:
            det = items[k - 1] if k and items[k - 1]["pos"] == "det" else None
            if det is not None and det["src"] in ("the", "this"):
                ending = "e"
            else:
                ending = {"m": "er", "f": "e", "n": "es"}.get(gender or "m", "e")
            item["text"] = (item["text"][:-1] if item["text"].endswith("e") else item["text"]) + ending
    # placement: Spanish and French adjectives follow their noun (but French BAGS adjectives precede it)
    if lang in ("es", "fr"):
        k = 0
        while k < len(items):
            end = k
            while end < len(items) and items[end]["pos"] == "adj":
                end += 1
            if end > k and end < len(items) and items[end]["pos"] == "n":
                run = items[k:end]
                before = [a for a in run if lang == "fr" and LEX[a["src"]]["fr"]["text"] in FR_BEFORE_NOUN]
                after = [a for a in run if a not in before]
                items[k:end + 1] = before + [items[end]] + after
                k = end + 1
            else:
                k = end + 1 if end > k else k + 1
    if lang == "fr":  # elision: l'école, and mon before a vowel
        for k, item in enumerate(items[:-1]):
            nxt = items[k + 1]["text"]
            if item["pos"] == "det" and nxt[:1].lower() in "aeiouhéèêâîôû" and items[k + 1]["pos"] in ("n", "adj"):
                if item["text"] in ("le", "la"):
                    item.update(text="l'", glue=True)
                elif item["text"] in ("ma", "ta"):
                    item["text"] = "mon" if item["text"] == "ma" else "ton"
    return items, unknown


def _to_english(tokens: list[str], lang: str) -> tuple[list[dict], list[str]]:
    items, unknown, i = [], [], 0
    table, phrases = REVERSE[lang], REVERSE_PHRASES[lang]
    while i < len(tokens):
        tok = tokens[i]
        hit = _lookup_phrase(tokens, i, phrases, shortest=1)
        if hit:
            items.append({"text": phrases[hit[0]], "pos": "phrase", "src": hit[0]})
            i += hit[1]
            continue
        low = tok.lower()
        entry = table.get(low)
        if entry is None and "'" in low[:-1] and low.split("'")[0] + "'" in table:  # French elision: l'école
            head, rest = low.split("'", 1)
            tokens[i + 1:i + 1] = [rest]
            low, entry = head + "'", table[head + "'"]
        items.append({"text": entry["text"], "pos": entry["pos"], "src": low} if entry is not None
                     else _word_item(tok, unknown))
        i += 1
    if lang in ("es", "fr"):  # noun adjective(s) -> adjective(s) noun
        k = 0
        while k < len(items):
            end = k + 1
            while items[k]["pos"] == "n" and end < len(items) and items[end]["pos"] == "adj":
                end += 1
            if end > k + 1:
                items[k:end] = items[k + 1:end] + [items[k]]
            k = end
    for item in items:
        if item["pos"] == "det" and item["text"] == "an":
            item["text"] = "a"
    return items, unknown


def _join(items: list[dict], capitalize: bool = True) -> str:
    out, glue = "", False
    for item in items:
        text = item["text"]
        if item["pos"] == "punct" and text not in "¿¡(\"" or glue:
            out += text
        else:
            out += (" " if out and not out.endswith(("¿", "¡", "(")) else "") + text
        glue = item.get("glue", False)
    return out[:1].upper() + out[1:] if out and capitalize else out


def translate(text: str, source: str, target: str) -> dict:
    """Phrase-table translation between any two of en, es, fr, de (through English if neither is English)."""
    for lang in (source, target):
        if lang not in LANGUAGES:
            raise BadRequest(f"language {lang!r} is not one of {', '.join(LANGUAGES)}")
    if source == target:
        return {"text": text, "unknown": [], "via": None}
    unknown: list[str] = []
    tokens = tokenize(text)
    via = None
    if source != "en":
        items, unknown = _to_english(tokens, source)
        if target == "en":
            return {"text": _join(items), "unknown": unknown, "via": None}
        tokens = [w for item in items for w in (tokenize(item["text"]) if item["pos"] != "unknown" else [item["text"]])]
        via = "en"
    items, more = _from_english(tokens, target)
    return {"text": _join(items), "unknown": unknown + [w for w in more if w not in unknown], "via": via}


def language_code(name: str) -> str:
    low = name.strip().lower()
    if low in LANGUAGES:
        return low
    if low in LANGUAGE_NAMES:
        return LANGUAGE_NAMES[low]
    raise BadRequest(f"unknown language {name!r} (known: {', '.join(sorted(LANGUAGES))})")


# ---- NLU: intents and entities ---------------------------------------------------------------------------
_UNITS = {"second": 1, "sec": 1, "minute": 60, "min": 60, "hour": 3600, "hr": 3600, "day": 86400}
_WORD_NUMBERS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
                 "eight": 8, "nine": 9, "ten": 10, "fifteen": 15, "twenty": 20, "thirty": 30, "forty": 40,
                 "fifty": 50, "sixty": 60, "half an": 0.5, "half a": 0.5}
_DURATION = re.compile(r"\b(\d+(?:\.\d+)?|" + "|".join(sorted(_WORD_NUMBERS, key=len, reverse=True)) +
                       r")\s*(seconds?|secs?|minutes?|mins?|hours?|hrs?|days?)\b", re.I)
_CLOCK = re.compile(r"\b(?:at\s+)?(\d{1,2})(?::(\d{2}))?\s*(am|pm|a\.m\.|p\.m\.)|\b(?:at\s+)(\d{1,2}):(\d{2})\b|"
                    r"\b(noon|midnight)\b", re.I)
_DATES = ("today", "tomorrow", "tonight", "yesterday", "monday", "tuesday", "wednesday", "thursday", "friday",
          "saturday", "sunday", "weekend", "next week")
_EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")
_URL = re.compile(r"\bhttps?://[^\s\"']+")
_QUOTED = re.compile(r"\"([^\"]+)\"|'([^']+)'|“([^”]+)”")
_NUM = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w.])")
_RATING = re.compile(r"\b(\d+(?:\.\d+)?)\s*(?:/|out of)\s*(5|10|100)\b|\b(\d(?:\.\d)?)\s*stars?\b", re.I)
_CAPITAL = re.compile(r"\b(?:in|at|for|to|from|near)\s+((?:[A-Z][a-z]+)(?:\s+[A-Z][a-z]+)?)")
_PERSON = re.compile(r"\b(?:call|text|email|message|tell|ask|remind|with|meet|invite|(?:message|note|email|mail|"
                     r"text|write|send \w+) to)\s+((?:[A-Z][a-z]+)(?:\s+[A-Z][a-z]+)?)")

# intent -> [(regex, weight)]; the best total wins; ties go to the intent listed first
INTENT_PATTERNS: dict[str, list[tuple[str, float]]] = {
    "set_timer": [(r"\btimer\b", 3), (r"\bcountdown\b", 3), (r"\bset\b.*\bfor\b", 1)],
    "set_reminder": [(r"\bremind me\b", 4), (r"\breminder\b", 3), (r"\bwake me\b", 3), (r"\balarm\b", 3)],
    "weather": [(r"\bweather\b", 4), (r"\brain(?:ing|y)?\b", 2), (r"\bforecast\b", 3), (r"\bsunny\b", 2),
                (r"\btemperature\b", 2), (r"\bsnow\b", 2)],
    "play_music": [(r"\bplay\b", 3), (r"\bmusic\b", 2), (r"\bsong\b", 2), (r"\bplaylist\b", 2)],
    "translate": [(r"\btranslat", 4), (r"\bhow do you say\b", 4), (r"\bin (?:spanish|french|german|english)\b", 2)],
    "calculate": [(r"\d+\s*[-+*/x×÷^]\s*\d+", 3), (r"\b(?:plus|minus|times|divided by|multiplied by)\b", 3),
                  (r"\bcalculate\b", 3), (r"\bcompute\b", 2), (r"\bsquare root\b", 3)],
    "write_code": [(r"\b(?:function|code|script|program|snippet)\b", 3), (r"\bwrite\b", 1), (r"\bpython\b", 2)],
    "search": [(r"\bsearch\b", 3), (r"\blook up\b", 3), (r"\bfind\b", 1), (r"\bgoogle\b", 3)],
    "communicate": [(r"\bcall\b", 2), (r"\bsend\b.*\bmessage\b", 3), (r"\btext\b\s+[A-Z]", 3), (r"\bemail\b", 2)],
    "open": [(r"\bopen\b", 3), (r"\blaunch\b", 3), (r"\bstart\b", 1)],
    "greeting": [(r"^\s*(?:hi|hello|hey|good (?:morning|afternoon|evening))\b", 4)],
    "goodbye": [(r"\b(?:bye|goodbye|see you|good night)\b", 4)],
    "thanks": [(r"\b(?:thanks|thank you|cheers)\b", 4)],
    "chitchat": [(r"\bhow are you\b", 4), (r"\bjoke\b", 3), (r"\byour name\b", 3), (r"\bwho are you\b", 3),
                 (r"\bi feel\b", 2), (r"\bi am (?:so |very |really )?\w+\b", 1), (r"\bi'm\b", 1)],
    "feedback": [(r"\b(?:stars?|rating|out of (?:5|10))\b", 3), (r"\b(?:feedback|review)\b", 3),
                 (r"\b(?:that|this|it) (?:was|is) (?:great|good|bad|terrible|wrong|helpful|useless|awful)\b", 3),
                 (r"\b(?:wrong answer|not helpful|very helpful|well done)\b", 3),
                 (r"\b(?:wrong|incorrect|useless|unhelpful|helpful|excellent|terrible)\b", 2)],
    "question": [(r"^\s*(?:what|who|why|how|when|where|which|is|are|can|does|do)\b", 1), (r"\?\s*$", 1)],
}
_COMPILED = {i: [(re.compile(p, re.I), w) for p, w in ps] for i, ps in INTENT_PATTERNS.items()}


def extract_entities(text: str) -> dict:
    ents: dict[str, Any] = {}
    durations = []
    for amount, unit in _DURATION.findall(text):
        n = _WORD_NUMBERS.get(amount.lower()) or float(amount)
        base = unit.lower().rstrip("s")
        durations.append(int(round(n * _UNITS[base])))
    if durations:
        ents["duration_s"] = sum(durations)
    times = []
    for h, m, ampm, h2, m2, word in _CLOCK.findall(text):
        if word:
            times.append("12:00" if word.lower() == "noon" else "00:00")
        elif h2:
            times.append(f"{int(h2):02d}:{m2}")
        else:
            hour = int(h) % 12 + (12 if ampm.lower().startswith("p") else 0)
            times.append(f"{hour:02d}:{m or '00'}")
    if times:
        ents["times"] = times
    low = text.lower()
    dates = [d for d in _DATES if re.search(rf"\b{d}\b", low)]
    if dates:
        ents["dates"] = dates
    langs = [code for name, code in LANGUAGE_NAMES.items() if re.search(rf"\b{name}\b", low)]
    if langs:
        ents["languages"] = list(dict.fromkeys(langs))
    quoted = [a or b or c for a, b, c in _QUOTED.findall(text)]
    if quoted:
        ents["quoted"] = quoted
    for key, rx in (("emails", _EMAIL), ("urls", _URL)):
        found = rx.findall(text)
        if found:
            ents[key] = found
    scrubbed = _CLOCK.sub(" ", _QUOTED.sub(" ", _URL.sub(" ", _EMAIL.sub(" ", text))))
    numbers = [float(n) if "." in n else int(n) for n in _NUM.findall(scrubbed)]
    if numbers:
        ents["numbers"] = numbers
    people = [m for m in _PERSON.findall(text) if m.split()[0].lower() not in LANGUAGE_NAMES]
    if people:
        ents["people"] = list(dict.fromkeys(people))
    places = [m for m in _CAPITAL.findall(text) if m not in people and m.split()[0].lower() not in LANGUAGE_NAMES
              and m.split()[0].lower() not in _DATES]
    if places:
        ents["places"] = list(dict.fromkeys(places))
    rating = _RATING.search(text)
    if rating:
        value, scale, stars = rating.groups()
        ents["rating"] = round(float(stars) if stars else float(value) * 5.0 / float(scale), 2)
    return ents


def slots_for(intent: str, text: str, ents: dict) -> dict:
    """The slots an intent needs, filled from the entities and the words around them."""
    low = text.lower()
    quoted = (ents.get("quoted") or [None])[0]
    if intent == "set_timer":
        return {"duration_s": ents.get("duration_s")}
    if intent == "set_reminder":
        m = re.search(r"\bremind me to (.+?)(?:\s+(?:at|on|in|tomorrow|today|tonight)\b|$)", text, re.I)
        return {"task": m.group(1).strip(" .") if m else None, "time": (ents.get("times") or [None])[0],
                "date": (ents.get("dates") or [None])[0]}
    if intent == "weather":
        return {"location": (ents.get("places") or [None])[0], "date": (ents.get("dates") or ["today"])[0]}
    if intent == "play_music":
        m = re.search(r"\bplay\s+(?:some\s+|the\s+)?(.+?)(?:\s+by\s+(.+?))?\s*[.!]?$", text, re.I)
        return {"query": m.group(1) if m else None, "artist": m.group(2) if m and m.group(2) else None}
    if intent == "translate":
        m = re.search(r"\bhow do you say\s+(.+?)\s+in\s+(\w+)", text, re.I)
        if m and not quoted:
            quoted = m.group(1).strip(" '\"")
        if not quoted:
            m = re.search(r"\btranslate\s+(.+?)\s+(?:to|into)\s+\w+", text, re.I)
            quoted = m.group(1).strip(" '\"") if m else None
        target = next((c for c in ents.get("languages", [])
                       if re.search(rf"\b(?:to|into|in)\s+{'|'.join(n for n, k in LANGUAGE_NAMES.items() if k == c)}",
                                    low)), None)
        return {"text": quoted, "target": target or (ents.get("languages") or [None])[-1]}
    if intent == "calculate":
        m = re.search(r"(?:calculate|compute|what is|what's|how much is)\s+(.+?)\s*[?.]?$", text, re.I)
        return {"expression": (m.group(1) if m else text).strip()}
    if intent == "write_code":
        m = re.search(r"\b(?:function|code|script|program|snippet)\b\s*(?:that|to|which|for)?\s*(.+?)\s*[.?]?$",
                      text, re.I)
        return {"description": m.group(1) if m and m.group(1) else text}
    if intent == "search":
        m = re.search(r"\b(?:search(?: for)?|look up|google|find)\s+(.+?)\s*[.?]?$", text, re.I)
        return {"query": quoted or (m.group(1) if m else None)}
    if intent == "communicate":
        m = re.search(r"\bsaying\s+(.+)$", text, re.I)
        return {"contact": (ents.get("people") or [None])[0], "message": quoted or (m.group(1) if m else None)}
    if intent == "open":
        m = re.search(r"\b(?:open|launch|start)\s+(?:the\s+|my\s+)?(.+?)\s*[.!]?$", text, re.I)
        return {"target": m.group(1) if m else None}
    if intent == "feedback":
        return {"rating": ents.get("rating")}
    return {}


def parse(text: str) -> dict:
    scores = {i: float(sum(w for rx, w in pats if rx.search(text))) for i, pats in _COMPILED.items()}
    ranked = sorted(scores.items(), key=lambda kv: (-kv[1], list(_COMPILED).index(kv[0])))
    best, top = ranked[0]
    total = sum(s for _, s in ranked)
    intent = best if top > 0 else "unknown"
    ents = extract_entities(text)
    sentiment = analyze_text(text)
    polarity = "positive" if sentiment["valence"] >= 0.2 else "negative" if sentiment["valence"] <= -0.2 else "neutral"
    return {"text": text, "intent": intent, "confidence": round(top / total, 3) if total else 0.0,
            "alternatives": [i for i, s in ranked[1:4] if s > 0], "entities": ents,
            "slots": slots_for(intent, text, ents),
            "sentiment": {"polarity": polarity, "valence": sentiment["valence"], "emotion": sentiment["emotion"]}}


# ---- NLUAgent --------------------------------------------------------------------------------------------
class NLUAgent(ModelBacked):
    """Intents and entities.

    Real: rule-based intent recognition (weighted patterns for 16 intents: timers, reminders, weather,
    music, translation, arithmetic, code, search, messages, opening things, greetings, goodbyes, thanks,
    small talk, feedback, questions; alternatives ranked), entities (durations in seconds, clock times,
    dates, languages, quoted text, e-mail addresses, URLs, numbers, people, places, ratings normalised to
    5), the slots each intent needs, and the sentiment of the text from the emotion lexicon. The model
    is admitted by SystemDigitalTwin and pinned in ModelManagerSuite; each parse is one use.
    Stands in: patterns for a trained intent and entity model, `weights_mb` of held memory for its weights.
    """

    CAPABILITIES = ("language.nlu", "language.intents", "language.entities")
    MODEL = "nlu-rules"

    def setup(self) -> None:
        self.load_model()
        super().setup()

    def handle_parse(self, body: Any) -> dict:
        """{text} (or a string) -> {intent, confidence, alternatives, entities, slots, sentiment}."""
        text = body if isinstance(body, str) else field(body, "text", str)
        if not text.strip():
            raise BadRequest("text is empty")
        self.use_model()
        out = parse(text)
        self.counters[f"intent.{out['intent']}"] += 1
        return out

    def handle_intents(self, body: Any) -> list[str]:
        return list(INTENT_PATTERNS)


class _UsesNLU(CatalogAgent):
    def parse(self, text: str) -> dict:
        return self.call(NLU, "parse", {"text": text}, timeout=3.0)


# ---- AdvancedCommandHandler ------------------------------------------------------------------------------
_SPLIT = re.compile(r"\s*(?:;|,?\s+and then\s+|,?\s+then\s+|,?\s+after that\s+)\s*", re.I)


class AdvancedCommandHandler(_UsesNLU):
    """Compound commands and macros.

    Real: a command is split into steps ("...; ...", "... and then ...", "... then ..."), NLUAgent parses
    each, and each step is carried out by its handler: arithmetic evaluated exactly (the reasoning
    group's evaluator, in-process), code generated by CodeGenerator (compiled there), timers and
    reminders kept here on a logical clock (`tick` advances it and returns what fell due); steps of other
    intents are answered as routed, not done. Named macros store a list of commands and run them.
    Stands in: the timers do not ring, they fall due when `tick` says so.
    """

    CAPABILITIES = ("language.commands", "language.macros")

    def setup(self) -> None:
        self.macros: dict[str, list[str]] = {}
        self.timers: list[dict] = []
        self.clock = 0
        self.next_timer = 0
        super().setup()

    def _step(self, text: str) -> dict:
        p = self.parse(text)
        intent, slots = p["intent"], p["slots"]
        step = {"text": text, "intent": intent, "slots": slots, "done": True}
        if intent == "calculate":
            from agents.reasoning import as_number, evaluate_steps, to_expression  # only when a step needs it

            expression, _ = to_expression(slots.get("expression") or text)
            value, ops = evaluate_steps(expression)
            step["result"] = {"expression": expression, "answer": as_number(value), "steps": len(ops)}
        elif intent == "write_code":
            g = self.call(CODEGEN, "generate", {"description": slots.get("description") or text}, timeout=5.0)
            step["result"] = {"name": g["name"], "source": g["source"], "compiled": g["compiled"]}
        elif intent in ("set_timer", "set_reminder"):
            seconds = slots.get("duration_s") or p["entities"].get("duration_s")
            if not seconds and intent == "set_timer":
                step.update(done=False, result={"error": "how long? a timer needs a duration"})
                return step
            self.next_timer += 1
            timer = {"id": f"t{self.next_timer}", "label": slots.get("task") or text, "seconds": seconds,
                     "due": self.clock + (seconds or 0), "time": slots.get("time")}
            self.timers.append(timer)
            step["result"] = dict(timer)
        else:
            step.update(done=False, result={"routed": intent})
        self.counters[f"step.{intent}"] += 1
        return step

    def handle_execute(self, body: Any) -> dict:
        """{text} -> {steps: [{text, intent, slots, done, result}], done: all steps done}."""
        text = body if isinstance(body, str) else field(body, "text", str)
        parts = [s for s in _SPLIT.split(text.strip()) if s]
        if not parts:
            raise BadRequest("no command given")
        if len(parts) > 16:
            raise BadRequest("at most 16 steps per command")
        steps = [self._step(p) for p in parts]
        return {"steps": steps, "done": all(s["done"] for s in steps)}

    def handle_define(self, body: Any) -> dict:
        """{name, commands: [text]}: a macro."""
        name, commands = field(body, "name", str), field(body, "commands", list)
        if not commands or not all(isinstance(c, str) and c.strip() for c in commands):
            raise BadRequest("commands must be a non-empty list of texts")
        self.macros[name.lower()] = commands
        return {"name": name.lower(), "commands": len(commands)}

    def handle_run(self, body: Any) -> dict:
        """{name} -> the macro's commands executed in order."""
        name = field(body, "name", str).lower()
        if name not in self.macros:
            raise BadRequest(f"no macro {name!r} (macros: {', '.join(sorted(self.macros)) or 'none'})")
        results = [self.handle_execute({"text": c}) for c in self.macros[name]]
        return {"name": name, "results": results, "done": all(r["done"] for r in results)}

    def handle_tick(self, body: Any) -> dict:
        """{seconds}: advance the clock; -> timers that fell due (and are removed)."""
        self.clock += field(body, "seconds", int)
        due = [t for t in self.timers if t["due"] <= self.clock]
        self.timers = [t for t in self.timers if t["due"] > self.clock]
        return {"clock": self.clock, "due": due, "pending": len(self.timers)}


# ---- ChitchatAgent ---------------------------------------------------------------------------------------
_REFLECTIONS = {"i": "you", "me": "you", "my": "your", "mine": "yours", "am": "are", "i'm": "you're",
                "you": "I", "your": "my", "yours": "mine", "are": "am", "you're": "I'm", "myself": "yourself",
                "we": "you", "our": "your", "i've": "you've", "i'll": "you'll", "was": "were"}
JOKES = ("Why do programmers prefer dark mode? Because light attracts bugs.",
         "There are 10 kinds of people: those who understand binary and those who don't.",
         "Why did the process go to therapy? It had too many unresolved dependencies.")


def reflect(fragment: str) -> str:
    return " ".join(_REFLECTIONS.get(w.lower(), w) for w in fragment.strip(" .!?").split())


class ChitchatAgent(_UsesNLU):
    """Small talk.

    Real: NLUAgent's intent and sentiment choose the reply: greetings, goodbyes and thanks answered in
    kind, "how are you", the assistant's name (`config.name`), jokes taken in turn, feelings reflected
    back ELIZA-style with pronouns swapped ("I feel lost in my job" -> "Why do you feel lost in your
    job?"), sympathy for negative sentiment; each session takes its variants in turn, so the same line is
    not said twice in a row. Stands in: patterns and templates for a dialogue model.
    """

    CAPABILITIES = ("language.chitchat",)

    def setup(self) -> None:
        self.assistant_name = str(self.config.get("name", "Sunset"))
        self.sessions: dict[str, int] = {}
        super().setup()

    def _pick(self, session: str, options: tuple[str, ...]) -> str:
        n = self.sessions.get(session, 0)
        return options[n % len(options)]

    def handle_chat(self, body: Any) -> dict:
        """{text, session?} -> {reply, intent, rule}."""
        text = body if isinstance(body, str) else field(body, "text", str)
        session = field(body, "session", str, "default") if isinstance(body, dict) else "default"
        p = self.parse(text)
        intent, low = p["intent"], text.lower()
        feel = re.search(r"\bi (?:feel|am feeling|'m feeling)\s+(.+)", text, re.I)
        am = re.search(r"\bi(?: am|'m)\s+(.+)", text, re.I)
        if intent == "greeting":
            rule, reply = "greeting", self._pick(session, ("Hello! How can I help?", "Hi again! What's up?"))
        elif intent == "goodbye":
            rule, reply = "goodbye", "Goodbye! Talk soon."
        elif intent == "thanks":
            rule, reply = "thanks", self._pick(session, ("You're welcome!", "Any time!"))
        elif "joke" in low:
            rule, reply = "joke", JOKES[self.counters["jokes"] % len(JOKES)]
            self.counters["jokes"] += 1
        elif "your name" in low or "who are you" in low:
            rule, reply = "name", f"I'm {self.assistant_name}, the assistant on this machine."
        elif "how are you" in low:
            rule, reply = "how_are_you", "I'm doing well, thanks for asking. How are you?"
        elif feel:
            rule, reply = "reflect", f"Why do you feel {reflect(feel.group(1))}?"
        elif am and p["sentiment"]["polarity"] == "negative":
            rule, reply = "sympathy", f"I'm sorry to hear you're {reflect(am.group(1))}. Want to talk about it?"
        elif am:
            rule, reply = "reflect", f"How long have you been {reflect(am.group(1))}?"
        elif p["sentiment"]["polarity"] == "negative":
            rule, reply = "sympathy", "That sounds difficult. Tell me more."
        else:
            rule, reply = "open", self._pick(session, ("Tell me more.", "Interesting. Go on.", "I see. And then?"))
        self.sessions[session] = self.sessions.get(session, 0) + 1
        self.counters[f"rule.{rule}"] += 1
        return {"reply": reply, "intent": intent, "rule": rule, "turn": self.sessions[session]}


# ---- FeedbackHandler -------------------------------------------------------------------------------------
class FeedbackHandler(_UsesNLU):
    """User feedback: collected, rated and summarised.

    Real: each piece of feedback is parsed by NLUAgent for its rating ("4 stars", "8/10", "3 out of 5",
    normalised to 1..5) and sentiment; a rating stands, otherwise the sentiment gives one (positive 4,
    neutral 3, negative 2); per target: count, mean rating, sentiment counts, a net score (share of 4-5
    minus share of 1-2) and the most frequent complaint words; the mean goes to ObservabilityHub.
    Stands in: nothing beyond NLUAgent's rules.
    """

    CAPABILITIES = ("language.feedback",)

    def setup(self) -> None:
        self.items: dict[str, list[dict]] = {}
        super().setup()

    def handle_submit(self, body: Any) -> dict:
        """{text, target?} -> {rating, source: stated | sentiment, polarity}."""
        text, target = field(body, "text", str), field(body, "target", str, "general")
        p = self.parse(text)
        rating = p["entities"].get("rating")
        polarity = p["sentiment"]["polarity"]
        source = "stated"
        if rating is None:
            rating, source = {"positive": 4.0, "neutral": 3.0, "negative": 2.0}[polarity], "sentiment"
        rating = max(1.0, min(5.0, float(rating)))
        self.items.setdefault(target, []).append({"text": text, "rating": rating, "polarity": polarity})
        self.counters["feedback"] += 1
        return {"target": target, "rating": rating, "source": source, "polarity": polarity,
                "count": len(self.items[target])}

    def handle_summary(self, body: Any) -> dict:
        """{target?} -> {count, mean_rating, sentiment counts, net_score, complaints}."""
        target = field(body, "target", str, "general") if isinstance(body, dict) else "general"
        items = self.items.get(target, [])
        if not items:
            return {"target": target, "count": 0, "mean_rating": None}
        from agents.memory import terms  # stemmed content words

        complaints: dict[str, int] = {}
        for it in items:
            if it["rating"] <= 2:
                for w in terms(it["text"]):
                    if not w.isdigit() and w not in ("star", "out"):
                        complaints[w] = complaints.get(w, 0) + 1
        mean = round(sum(i["rating"] for i in items) / len(items), 2)
        net = (sum(i["rating"] >= 4 for i in items) - sum(i["rating"] <= 2 for i in items)) / len(items)
        self.report({f"mean_rating.{target}": mean})
        return {"target": target, "count": len(items), "mean_rating": mean,
                "sentiment": {k: sum(i["polarity"] == k for i in items) for k in ("positive", "neutral", "negative")},
                "net_score": round(net, 3),
                "complaints": [w for w, _ in sorted(complaints.items(), key=lambda kv: (-kv[1], kv[0]))[:5]]}


# ---- Responder -------------------------------------------------------------------------------------------
ANSWERS = {
    "set_timer": "Timer set for {duration}.", "set_reminder": "I'll remind you to {task}{when}.",
    "weather": "Here is the weather for {location}, {date}.", "play_music": "Playing {query}.",
    "translate": "Translating {text}.", "calculate": "Let me work out {expression}.",
    "write_code": "I'll write that code.", "search": "Searching for {query}.",
    "communicate": "Contacting {contact}.", "open": "Opening {target}.", "greeting": "Hello{name}!",
    "goodbye": "Goodbye{name}!", "thanks": "You're welcome{name}!", "chitchat": "Happy to chat{name}.",
    "feedback": "Thanks for the feedback.", "question": "Good question. Let me find out.",
    "unknown": "Sorry, I didn't catch that.",
}
OPENERS = {"sadness": "I'm sorry to hear that. ", "anger": "I understand this is frustrating. ",
           "fear": "Don't worry, we'll sort it out. ", "joy": "Great! ", "surprise": "Oh! ", "disgust": "",
           "neutral": ""}


def _duration_words(seconds: int | None) -> str:
    if not seconds:
        return "the time you asked"
    parts = []
    for unit, n in (("hour", 3600), ("minute", 60), ("second", 1)):
        if seconds >= n:
            k, seconds = divmod(seconds, n)
            parts.append(f"{k} {unit}{'s' if k != 1 else ''}")
    return " and ".join(parts)


class Responder(CatalogAgent):
    """The reply a person gets: personal, fitting the request and the mood, spoken if asked.

    Real: the reply is composed from what the other agents find: who is in the camera's image
    (FaceRecognitionAgent.identify, when an image is given) so the reply uses their name, what is asked
    (NLUAgent: intent and slots fill the intent's template) and how they feel (EmotionEngine: an opener
    that fits, except on greetings, thanks and goodbyes); `speak: stream` plays it through
    StreamingTTSAgent, `speak: direct` synthesises it at once with TTSService. Stands in: templates for a
    response-generation model.
    """

    CAPABILITIES = ("language.respond",)

    def setup(self) -> None:
        self.min_face_score = float(self.config.get("min_face_score", 0.0))
        super().setup()

    def handle_respond(self, body: Any) -> dict:
        """{text, image?, speak?: stream | direct} -> {reply, person, intent, emotion, audio?}."""
        text = field(body, "text", str)
        image = field(body, "image", list, None)
        speak = field(body, "speak", str, None)
        if speak not in (None, "stream", "direct"):
            raise BadRequest("speak must be stream or direct")
        person, face_score = None, None
        if image is not None:
            face = self.call(FACES, "identify", {"image": image}, timeout=5.0)
            face_score = face.get("score")
            if face.get("person") and (face_score or 0.0) >= self.min_face_score:
                person = face["person"]
        p = self.call(NLU, "parse", {"text": text}, timeout=3.0)
        e = self.call(ENGINE, "analyze", {"text": text}, timeout=3.0)
        slots = {k: v for k, v in p["slots"].items() if v is not None}
        values = {"duration": _duration_words(slots.get("duration_s")), "task": slots.get("task", "do that"),
                  "when": f" at {slots['time']}" if slots.get("time") else "",
                  "location": slots.get("location", "here"), "date": slots.get("date", "today"),
                  "query": slots.get("query", "that"), "text": repr(slots["text"]) if slots.get("text") else "that",
                  "expression": slots.get("expression", "that"), "contact": slots.get("contact", "them"),
                  "target": slots.get("target", "it"), "name": f", {person}" if person else ""}
        social = p["intent"] in ("greeting", "goodbye", "thanks")  # their answer already fits the mood
        reply = ("" if social else OPENERS[e["emotion"]]) + ANSWERS[p["intent"]].format(**values)
        if person and p["intent"] not in ("greeting", "goodbye", "thanks", "chitchat"):
            reply = f"{person}, {reply[0].lower()}{reply[1:]}"
        out = {"reply": reply, "person": person, "face_score": face_score, "intent": p["intent"],
               "emotion": e["emotion"], "audio": None}
        if speak == "stream":
            play = self.call(STREAMING_TTS, "speak", {"text": reply}, timeout=10.0)
            out["audio"] = {"via": STREAMING_TTS, "playback": play["id"], "chunks": play["chunks"],
                            "duration_ms": play["duration_ms"]}
        elif speak == "direct":
            synth = self.call(TTS, "synthesize", {"text": reply}, timeout=10.0)
            out["audio"] = {"via": TTS, "samples": synth["samples"], "duration_ms": synth["duration_ms"],
                            "spoken": synth["text"]}
        self.counters[f"intent.{p['intent']}"] += 1
        self.counters["recognised" if person else "anonymous"] += 1
        return out


# ---- TranslationService ----------------------------------------------------------------------------------
class TranslationService(ModelBacked):
    """Translation between English, Spanish, French and German.

    Real: phrase-table translation with a built-in bilingual lexicon (about 110 words with part of speech
    and gender, 20 phrases): longest phrase first, then words; determiners and adjectives agree with
    their noun's gender, German attributive adjectives take their endings, Spanish and French adjectives
    move after the noun (French BAGS adjectives stay before it); from the other languages back to English
    the order is undone; between two non-English languages it pivots through English; unknown words are
    kept and listed. Language detection by vocabulary overlap. The model is pinned in ModelManagerSuite,
    each request one use. Stands in: the tables for a neural translation model (no tense, number or
    case beyond what is listed), `weights_mb` of held memory for its weights.
    """

    CAPABILITIES = ("language.translate", "language.detect")
    MODEL = "translation-tables"

    def setup(self) -> None:
        self.load_model()
        super().setup()

    def handle_translate(self, body: Any) -> dict:
        """{text, to, from?} -> {text, source, target, unknown, via}; `from` is detected when not given."""
        text = field(body, "text", str)
        target = language_code(field(body, "to", str))
        source = field(body, "from", str, None)
        detected = None
        if source is None:
            detected = detect_language(text)
            if detected["language"] is None:
                raise AgentError("cannot tell the language of the text; give `from`")
            source = detected["language"]
        source = language_code(source)
        self.use_model()
        out = translate(text, source, target)
        self.counters[f"pair.{source}-{target}"] += 1
        return {"text": out["text"], "source": source, "target": target, "unknown": out["unknown"], "via": out["via"],
                "detected": detected}

    def handle_detect(self, body: Any) -> dict:
        """{text} -> {language, confidence, scores}."""
        return detect_language(body if isinstance(body, str) else field(body, "text", str))

    def handle_languages(self, body: Any) -> dict:
        return dict(LANGUAGES)


# ---- DynamicIdentityAgent --------------------------------------------------------------------------------
PERSONAS = {
    "assistant": {"style": "neutral", "greeting": "Hello.", "sign_off": ""},
    "teacher": {"style": "formal", "greeting": "Good question.", "sign_off": " Does that make sense?"},
    "friend": {"style": "casual", "greeting": "Hey!", "sign_off": " :)"},
    "engineer": {"style": "terse", "greeting": "", "sign_off": ""},
}
PERSONA_FOR_INTENT = {"question": "teacher", "greeting": "friend", "remember": "friend", "health": "engineer",
                      "resources": "engineer", "optimize": "engineer", "models": "engineer"}
_CONTRACTIONS = {"do not": "don't", "does not": "doesn't", "is not": "isn't", "are not": "aren't", "cannot": "can't",
                 "will not": "won't", "i am": "I'm", "it is": "it's", "you are": "you're", "we are": "we're",
                 "that is": "that's", "there is": "there's", "i will": "I'll", "let us": "let's"}
_FILLERS = re.compile(r"\b(?:please|just|really|basically|actually|i think|kind of|sort of|very)\b\s*", re.I)


def _case_like(src: str, repl: str) -> str:
    return repl[0].upper() + repl[1:] if src[:1].isupper() else repl


def stylize(text: str, persona: dict) -> str:
    style = persona["style"]
    out = text.strip()
    if style == "formal":
        for full, short in _CONTRACTIONS.items():
            out = re.sub(rf"\b{re.escape(short)}\b", lambda m, f=full: _case_like(m.group(0), f), out, flags=re.I)
    elif style == "casual":
        for full, short in _CONTRACTIONS.items():
            out = re.sub(rf"\b{full}\b", lambda m, s=short: _case_like(m.group(0), s), out, flags=re.I)
    elif style == "terse":
        out = _FILLERS.sub("", out)
        out = re.split(r"(?<=[.!?])\s+", out)[0]
        out = out[:1].upper() + out[1:]
    greeting = persona.get("greeting") or ""
    return f"{greeting} {out}{persona.get('sign_off') or ''}".strip()


class DynamicIdentityAgent(CatalogAgent):
    """Personas: who the assistant is in a conversation, and how it words things.

    Real: a persona per session, chosen by the intent RequestCoordinator classifies for the user's text
    (questions get the teacher, greetings and memories the friend, system matters the engineer, anything
    else the assistant) unless one is set by hand; `stylize` rewrites a reply in the persona's style
    (formal expands contractions, casual makes them, terse drops fillers and keeps the first sentence)
    with its greeting and sign-off; `config.personas` adds or overrides personas. Stands in: style rules
    for a persona-conditioned model.
    """

    CAPABILITIES = ("language.persona",)

    def setup(self) -> None:
        self.personas = {**PERSONAS, **(self.config.get("personas") or {})}
        self.sessions: dict[str, str] = {}
        super().setup()

    def _persona(self, name: str) -> dict:
        if name not in self.personas:
            raise BadRequest(f"no persona {name!r} (personas: {', '.join(sorted(self.personas))})")
        return self.personas[name]

    def handle_select(self, body: Any) -> dict:
        """{text, session?} -> {persona, intent}: the persona for this turn (kept for the session)."""
        text, session = field(body, "text", str), field(body, "session", str, "default")
        c = self.call(RC, "classify", {"text": text}, timeout=2.0)
        persona = PERSONA_FOR_INTENT.get(c["intent"], "assistant")
        self.sessions[session] = persona
        self.counters[f"persona.{persona}"] += 1
        return {"session": session, "persona": persona, "intent": c["intent"], "style": self.personas[persona]["style"]}

    def handle_set(self, body: Any) -> dict:
        """{session?, persona}: choose by hand."""
        session, persona = field(body, "session", str, "default"), field(body, "persona", str)
        self._persona(persona)
        self.sessions[session] = persona
        return {"session": session, "persona": persona}

    def handle_stylize(self, body: Any) -> dict:
        """{text, persona? | session?} -> {text in the persona's style, persona}."""
        text = field(body, "text", str)
        name = field(body, "persona", str, None) or self.sessions.get(field(body, "session", str, "default"),
                                                                      "assistant")
        return {"persona": name, "text": stylize(text, self._persona(name))}

    def handle_personas(self, body: Any) -> dict:
        return {n: dict(p) for n, p in sorted(self.personas.items())}

    def handle_describe(self, body: Any) -> dict:
        """{session?} -> the session's persona, recorded with SystemDigitalTwin as a usage series."""
        session = field(body, "session", str, "default") if isinstance(body, dict) else "default"
        name = self.sessions.get(session, "assistant")
        self.call(TWIN, "observe", {"metric": f"{self.name}.sessions", "value": len(self.sessions)}, timeout=2.0)
        return {"session": session, "persona": name, **self.personas[name]}
