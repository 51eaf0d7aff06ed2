"""Build the answer-format example: 40 training chats and 12 held-out prompts in one fixed template.

The behaviour: every reply is exactly two lines,

    ANSWER: <the short answer>
    WHY: <one sentence>

which SmolLM2-135M-Instruct never produces on its own. The set is small on purpose: it checks
that `ragtune train` with its defaults (--epochs auto, the default learning rate) teaches a
format from 40 examples. The held-out questions are other questions; their `answer` lets the
scorer check that the adapter still knows what the base model knew.
Run: python examples/answer-format/make_data.py
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent

TRAIN = [
    ("What is the capital of France?", "Paris", "Paris is the capital and largest city of France."),
    ("What is the capital of Japan?", "Tokyo", "Tokyo is the capital of Japan."),
    ("What is the capital of Italy?", "Rome", "Rome has been the capital of Italy since 1871."),
    ("What is the capital of Spain?", "Madrid", "Madrid is the capital of Spain."),
    ("What is the capital of Germany?", "Berlin", "Berlin is the capital of Germany."),
    ("What is the capital of Canada?", "Ottawa", "Ottawa is the capital of Canada."),
    ("What is the capital of Egypt?", "Cairo", "Cairo is the capital of Egypt."),
    ("What is the capital of Russia?", "Moscow", "Moscow is the capital of Russia."),
    ("How many days are in a week?", "7", "A week has seven days."),
    ("How many legs does a spider have?", "8", "Spiders have eight legs."),
    ("How many continents are there?", "7", "There are seven continents."),
    ("How many hours are in a day?", "24", "A day has twenty-four hours."),
    ("What is 2 plus 2?", "4", "Two plus two equals four."),
    ("What is 10 times 10?", "100", "Ten times ten is one hundred."),
    ("What is 9 minus 3?", "6", "Nine minus three is six."),
    ("What color is the sky on a clear day?", "Blue", "Sunlight scattered by the air makes the sky look blue."),
    ("What color are ripe bananas?", "Yellow", "Ripe bananas are yellow."),
    ("What gas do plants take in?", "Carbon dioxide", "Plants take in carbon dioxide for photosynthesis."),
    ("What do bees make?", "Honey", "Bees make honey from flower nectar."),
    ("What is frozen water called?", "Ice", "Water becomes ice when it freezes."),
    ("At what temperature does water boil at sea level?", "100 °C", "Water boils at 100 °C at sea level."),
    ("Which planet do we live on?", "Earth", "We live on Earth, the third planet from the Sun."),
    ("Which planet is known as the Red Planet?", "Mars", "Mars looks red because of iron oxide dust."),
    ("What is the largest ocean?", "The Pacific Ocean", "The Pacific is the largest ocean on Earth."),
    ("Who wrote Romeo and Juliet?", "William Shakespeare", "William Shakespeare wrote Romeo and Juliet."),
    ("Who painted the Mona Lisa?", "Leonardo da Vinci", "Leonardo da Vinci painted the Mona Lisa."),
    ("What language is spoken in Brazil?", "Portuguese", "Portuguese is the official language of Brazil."),
    ("What language is spoken in Mexico?", "Spanish", "Spanish is the main language of Mexico."),
    ("What is the opposite of hot?", "Cold", "Cold is the opposite of hot."),
    ("What is the opposite of up?", "Down", "Down is the opposite of up."),
    ("What animal says moo?", "A cow", "Cows say moo."),
    ("What animal is known as man's best friend?", "The dog", "Dogs are called man's best friend."),
    ("What do you call a baby cat?", "A kitten", "A young cat is called a kitten."),
    ("What do you call a baby dog?", "A puppy", "A young dog is called a puppy."),
    ("How many sides does a triangle have?", "3", "A triangle has three sides."),
    ("How many sides does a square have?", "4", "A square has four sides."),
    ("What is the freezing point of water in Celsius?", "0 °C", "Water freezes at 0 °C."),
    ("What is the first month of the year?", "January", "January is the first month of the year."),
    ("What is the last month of the year?", "December", "December is the last month of the year."),
    ("What star is at the center of our solar system?", "The Sun", "The Sun is at the center of the solar system."),
]

HELDOUT = [
    ("What is the capital of England?", "London"),
    ("What is the capital of China?", "Beijing"),
    ("What is the capital of Greece?", "Athens"),
    ("How many months are in a year?", "12"),
    ("What is 3 plus 4?", "7"),
    ("What color is grass?", "green"),
    ("Which planet is closest to the Sun?", "Mercury"),
    ("Who wrote Hamlet?", "Shakespeare"),
    ("What language is spoken in France?", "French"),
    ("What do you call a baby sheep?", "lamb"),
    ("How many legs does a dog have?", "4"),
    ("What is the opposite of day?", "night"),
]


def reply(answer: str, why: str) -> str:
    return f"ANSWER: {answer}\nWHY: {why}"


def main() -> None:
    with (HERE / "train.jsonl").open("w") as out:
        for question, answer, why in TRAIN:
            messages = [{"role": "user", "content": question}, {"role": "assistant", "content": reply(answer, why)}]
            out.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
    with (HERE / "heldout.jsonl").open("w") as out:
        for question, answer in HELDOUT:
            row = {"messages": [{"role": "user", "content": question}], "expected": {"answer": answer}}
            out.write(json.dumps(row, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
