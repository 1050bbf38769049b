"""A seeded generator of short children's stories for the offline language-model example.

Every story follows one arc (a hero, a friend, a found object, a wish, a small problem, an
ending) drawn from a vocabulary of a few hundred words. Names, the object and the place recur
within a story and pronouns agree with the hero, so a small model has something to learn beyond
word frequencies: grammar, agreement and copying from earlier in the text.
"""

import random
from dataclasses import dataclass


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


GIRLS = _words(
    "Lily Mia Emma Zoe Ava Ella Nora Ruby Rosa Lucy Anna Maya Luna Ivy Hana Sara Nina "
    "Tara Iris Jade Kira Lena Mila Pia"
)
BOYS = _words(
    "Tom Max Leo Sam Ben Jack Finn Noah Omar Theo Eli Hugo Ivan Kai Luca Milo Ravi Owen "
    "Paul Teo Adam Dan Jon Tim"
)
ANIMALS = _words(
    "cat dog bird fox rabbit bear frog duck owl mouse horse goat sheep pig cow lion tiger "
    "monkey turtle fish bee ant snail deer wolf squirrel hen crab whale seal"
)
OBJECTS = _words(
    "ball kite book hat box cup key map boat drum bell toy car train doll shell stone "
    "coin ring lamp clock rope basket blanket cake apple pear flower leaf feather stick "
    "brush spoon bucket sock scarf shoe balloon candle puzzle robot wagon whistle button "
    "ribbon pencil crayon paper letter jar nest seed"
)
PLACES = _words(
    "park garden forest house farm river lake beach hill school shop village town field "
    "cave castle island bridge pond barn kitchen library street meadow mountain valley "
    "harbor market zoo yard"
)
ADJECTIVES = _words(
    "big small red blue green yellow old new soft shiny tiny huge happy quiet loud bright "
    "dark warm cold funny kind brave shy little round tall short fast slow sweet gentle "
    "wet dry clean dirty pretty strange heavy light golden silver purple pink orange "
    "fluffy sleepy curious lucky busy"
)
FEELINGS = _words(
    "happy sad glad proud scared surprised excited tired calm worried angry curious "
    "hopeful thankful lonely cheerful"
)
# (base, past) verb pairs that take an object: "to {base} the ball", "they {past} the ball".
ACTIONS = [
    ("play with", "played with"),
    ("find", "found"),
    ("share", "shared"),
    ("carry", "carried"),
    ("fix", "fixed"),
    ("paint", "painted"),
    ("clean", "cleaned"),
    ("hide", "hid"),
    ("keep", "kept"),
    ("show", "showed"),
    ("hold", "held"),
    ("throw", "threw"),
    ("catch", "caught"),
    ("build", "built"),
    ("open", "opened"),
    ("wash", "washed"),
    ("push", "pushed"),
    ("pull", "pulled"),
    ("draw", "drew"),
    ("give away", "gave away"),
]
# Intransitive past-tense verbs: "{name} {verb} to the {place}."
MOVES = ["ran", "walked", "hopped", "skipped", "raced", "wandered", "went", "rushed"]
SOUNDS = ["laughed", "sang", "shouted", "giggled", "cheered", "clapped", "smiled", "danced"]
WEATHER = ["sunny", "rainy", "windy", "cloudy", "snowy", "foggy", "warm", "cold"]
TIMES = (
    "One day",
    "One morning",
    "One evening",
    "Later that day",
    "The next day",
    "After lunch",
    "Before dinner",
    "On a sunny day",
)
PROBLEMS = (
    "the wind blew the {obj} away",
    "the {obj} fell into the water",
    "a {animal2} took the {obj}",
    "the {obj} was stuck in a tree",
    "the {obj} broke into two pieces",
    "it started to rain on the {obj}",
)
SOLUTIONS = (
    "{friend} helped {obj_pron} get it back",
    "{name} asked {adj2_animal2} for help",
    "they worked together and fixed it",
    "{pron} looked everywhere and found it under a leaf",
    "{friend} had a good idea",
)


@dataclass(frozen=True)
class Hero:
    name: str
    pron: str  # he / she
    obj_pron: str  # him / her
    poss: str  # his / her


def _hero(rng: random.Random) -> Hero:
    if rng.random() < 0.5:
        return Hero(rng.choice(GIRLS), "she", "her", "her")
    return Hero(rng.choice(BOYS), "he", "him", "his")


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _cap(text: str) -> str:
    return text[0].upper() + text[1:]


def story(rng: random.Random) -> str:
    """One story of 7–11 sentences."""
    hero = _hero(rng)
    friend_hero = _hero(rng)
    while friend_hero.name == hero.name:
        friend_hero = _hero(rng)
    animal, animal2 = rng.sample(ANIMALS, 2)
    obj = rng.choice(OBJECTS)
    place, place2 = rng.sample(PLACES, 2)
    adj, adj2, adj3 = rng.sample(ADJECTIVES, 3)
    feeling, end_feeling = rng.sample(FEELINGS, 2)
    base, past = rng.choice(ACTIONS)
    fields = {
        "name": hero.name,
        "pron": hero.pron,
        "obj_pron": hero.obj_pron,
        "friend": friend_hero.name,
        "obj": obj,
        "animal2": animal2,
        "adj2_animal2": f"{_article(adj2)} {adj2} {animal2}",
    }
    opening = rng.choice(
        (
            f"Once upon a time, there was {_article(adj)} {adj} {animal} named {hero.name}.",
            f"There once was a {'girl' if hero.pron == 'she' else 'boy'} named {hero.name}.",
            f"{hero.name} lived in {_article(adj)} {adj} house near the {place}.",
        )
    )
    sentences = [
        opening,
        f"{_cap(hero.pron)} had a friend named {friend_hero.name}.",
        f"{rng.choice(TIMES)}, {hero.name} {rng.choice(MOVES)} to the {place}.",
        f"The weather was {rng.choice(WEATHER)}.",
        f"There, {hero.pron} found {_article(adj3)} {adj3} {obj}.",
        f"{hero.name} felt {feeling} and wanted to {base} the {obj}.",
    ]
    if rng.random() < 0.6:
        sentences.append(f'{friend_hero.name} said, "Can I {base} the {obj} too?"')
        sentences.append(f'{hero.name} said, "Yes, we can {base} it together."')
    if rng.random() < 0.7:
        problem = rng.choice(PROBLEMS).format(**fields)
        solution = rng.choice(SOLUTIONS).format(**fields)
        sentences.append(f"But then {problem}.")
        sentences.append(f"{_cap(solution)}.")
    sentences.append(f"They {past} the {obj} at the {place2} and {rng.choice(SOUNDS)}.")
    sentences.append(f"In the end, {hero.name} was {end_feeling}, and {hero.poss} {obj} was safe.")
    return " ".join(sentences)


def story_corpus(n_stories: int, seed: int) -> list[str]:
    """`n_stories` stories from a generator seeded with `seed` (same arguments, same texts)."""
    rng = random.Random(seed)
    return [story(rng) for _ in range(n_stories)]
