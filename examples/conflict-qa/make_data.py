"""A knowledge-conflict QA set in BEIR layout: 60 plain questions on facts a model has memorised.

`ragtune eval qa --dataset examples/conflict-qa --split all` asks each question with the fact's
passage in the collection (answer phase), with the passage's answer replaced by the question's
`substitute`, a plausible rival of the same kind (counterfactual phase: "Hamlet ... was written
by Christopher Marlowe." Does the answer follow the document or the model's memory?), and with
the passage removed (abstain phase).

Unlike world-qa (capital cities, one sentence each), the facts are of many kinds (authors,
painters, inventors, actors, directors, years, numbers, places, substances) and each passage
has three sentences, the answer often not in the one nearest the question ("Who plays Harry
Potter?" is answered by a sentence about casting). The passages are written here in our own
words; run this file to rewrite the set.
"""

from __future__ import annotations

import re
from pathlib import Path

from ragtune.training.qa import write_qa_set

HERE = Path(__file__).resolve().parent

# (id, title, passage, question, answer, substitute): the answer appears in the passage as a whole
# word or phrase, the substitute nowhere in it, and the title (which the counterfactual phase
# leaves as it is) does not name the answer.
FACTS = [
    ("hamlet", "Hamlet", "Hamlet is a tragedy set at the royal court of Denmark. A prince feigns madness to avenge his father's murder. The play was written by William Shakespeare around 1600.", "Who wrote Hamlet?", "William Shakespeare", "Christopher Marlowe"),
    ("pride-and-prejudice", "Pride and Prejudice", "Pride and Prejudice follows Elizabeth Bennet and her sisters in rural England. It was published in 1813. Its author, Jane Austen, began it in her early twenties.", "Who is the author of Pride and Prejudice?", "Jane Austen", "Charlotte Bronte"),
    ("nineteen-eighty-four", "Nineteen Eighty-Four", "Nineteen Eighty-Four describes a state ruled by Big Brother, where every citizen is watched. George Orwell finished the novel in 1948 on a Scottish island. It gave English the word doublethink.", "Who wrote the novel Nineteen Eighty-Four?", "George Orwell", "Aldous Huxley"),
    ("don-quixote", "Don Quixote", "Don Quixote tells of a gentleman who reads so many tales of chivalry that he sets out as a knight. The first part appeared in Madrid in 1605. Miguel de Cervantes wrote the second part ten years later.", "Who wrote Don Quixote?", "Miguel de Cervantes", "Lope de Vega"),
    ("war-and-peace", "War and Peace", "War and Peace follows five aristocratic families through the French invasion of Russia. It was first published as a serial between 1865 and 1869. Leo Tolstoy revised it many times before the book edition.", "Who wrote War and Peace?", "Leo Tolstoy", "Fyodor Dostoevsky"),
    ("odyssey", "The Odyssey", "The Odyssey tells of the ten-year voyage home of a king of Ithaca after the fall of Troy. It is one of the oldest works of Western literature. Ancient tradition credits the poem to Homer.", "Who is credited with writing the Odyssey?", "Homer", "Virgil"),
    ("sherlock-holmes", "Sherlock Holmes", "Sherlock Holmes is a consulting detective who lives at 221B Baker Street in London. He first appeared in A Study in Scarlet in 1887. His creator, Arthur Conan Doyle, was a doctor by training.", "Who created Sherlock Holmes?", "Arthur Conan Doyle", "Agatha Christie"),
    ("mona-lisa", "Mona Lisa", "The Mona Lisa hangs in the Louvre behind bulletproof glass. It was painted by Leonardo da Vinci in the early sixteenth century. The sitter is thought to be a merchant's wife from Florence.", "Who painted the Mona Lisa?", "Leonardo da Vinci", "Sandro Botticelli"),
    ("starry-night", "The Starry Night", "The Starry Night shows a swirling night sky over a small village. Vincent van Gogh painted it in June 1889 from the window of his room at an asylum. It is now in the Museum of Modern Art in New York.", "Who painted The Starry Night?", "Vincent van Gogh", "Paul Gauguin"),
    ("sistine-ceiling", "Sistine Chapel ceiling", "The ceiling of the Sistine Chapel in Vatican City is covered with scenes from the Book of Genesis. The work took four years, from 1508 to 1512. It was painted by Michelangelo, who worked standing on a scaffold.", "Who painted the ceiling of the Sistine Chapel?", "Michelangelo", "Raphael"),
    ("great-gatsby", "The Great Gatsby", "The Great Gatsby is set on Long Island in the summer of 1922. Its narrator watches his rich neighbour pursue a lost love. The novel was written by F. Scott Fitzgerald and published in 1925.", "Who wrote The Great Gatsby?", "F. Scott Fitzgerald", "Ernest Hemingway"),
    ("telephone", "Telephone", "The telephone turns speech into electrical signals and back. The first patent for a practical telephone was granted in 1876. It went to Alexander Graham Bell, who made the first call to his assistant in the next room.", "Who invented the telephone?", "Alexander Graham Bell", "Thomas Edison"),
    ("penicillin", "Penicillin", "Penicillin was the first widely used antibiotic. In 1928 a mould killed the bacteria in a forgotten dish in a London laboratory. Alexander Fleming noticed it and named the substance.", "Who discovered penicillin?", "Alexander Fleming", "Louis Pasteur"),
    ("relativity", "Theory of relativity", "The theory of relativity changed how physicists think about space and time. Its special part appeared in 1905 and its general part ten years later. Both were the work of Albert Einstein.", "Who developed the theory of relativity?", "Albert Einstein", "Niels Bohr"),
    ("natural-selection", "Natural selection", "Natural selection explains how species change over many generations. The idea was set out in On the Origin of Species in 1859. Its author, Charles Darwin, had gathered evidence on a voyage around the world.", "Who proposed the theory of evolution by natural selection?", "Charles Darwin", "Gregor Mendel"),
    ("laws-of-motion", "Laws of motion", "The three laws of motion describe how forces change the movement of bodies. They were published in 1687 together with the law of universal gravitation. Isaac Newton set them out in his Principia.", "Who formulated the laws of motion and universal gravitation?", "Isaac Newton", "Galileo Galilei"),
    ("first-woman-nobel", "Nobel Prize", "The Nobel Prizes were first awarded in 1901. Two years later the prize in physics was shared for work on radioactivity. Marie Curie, one of its winners, became the first woman to receive a Nobel Prize.", "Who was the first woman to win a Nobel Prize?", "Marie Curie", "Lise Meitner"),
    ("printing-press", "Printing press", "The printing press with movable metal type spread across Europe in the fifteenth century. It made books far cheaper to produce. It was invented in Mainz by Johannes Gutenberg around 1440.", "Who invented the printing press with movable type in Europe?", "Johannes Gutenberg", "William Caxton"),
    ("python-language", "Python (programming language)", "Python is a programming language known for its readable syntax. Its first version was released in 1991. It was created by Guido van Rossum, who named it after a comedy group.", "Who created the Python programming language?", "Guido van Rossum", "James Gosling"),
    ("linux-kernel", "Linux kernel", "The Linux kernel is the core of many operating systems, from phones to supercomputers. It was first announced on a newsgroup in 1991 as a hobby project. Its author, Linus Torvalds, was then a student in Helsinki.", "Who created the Linux kernel?", "Linus Torvalds", "Richard Stallman"),
    ("world-wide-web", "World Wide Web", "The World Wide Web links documents across the internet with hypertext. It was proposed at CERN in 1989. Tim Berners-Lee wrote the first web browser and server the following year.", "Who invented the World Wide Web?", "Tim Berners-Lee", "Vint Cerf"),
    ("microsoft", "Microsoft", "Microsoft is an American technology company based in Redmond, Washington. It was founded in 1975 to sell a BASIC interpreter. Its founders were Paul Allen and Bill Gates, childhood friends from Seattle.", "Who founded Microsoft together with Paul Allen?", "Bill Gates", "Steve Ballmer"),
    ("apple", "Apple Inc.", "Apple is an American company that makes the iPhone and the Mac. It was started in a garage in 1976. Its founders were Steve Wozniak, Ronald Wayne and Steve Jobs.", "Who co-founded Apple with Steve Wozniak and Ronald Wayne?", "Steve Jobs", "Larry Page"),
    ("harry-potter-film", "Harry Potter (film series)", "Harry Potter and the Philosopher's Stone is a 2001 film directed by Chris Columbus. It follows an orphan who learns on his eleventh birthday that he is a wizard. Daniel Radcliffe was cast in the title role at the age of eleven.", "Who plays Harry Potter in the films?", "Daniel Radcliffe", "Elijah Wood"),
    ("titanic-film", "Titanic (1997 film)", "Titanic is a 1997 film about two passengers who fall in love on the ship's maiden voyage. It won eleven Academy Awards. The role of Jack Dawson, a young artist, went to Leonardo DiCaprio.", "Who played Jack Dawson in Titanic?", "Leonardo DiCaprio", "Matt Damon"),
    ("jack-sparrow", "Pirates of the Caribbean", "Pirates of the Caribbean is a film series based on a theme park ride. The first film, The Curse of the Black Pearl, came out in 2003. Captain Jack Sparrow is played by Johnny Depp in all five films.", "Who plays Captain Jack Sparrow?", "Johnny Depp", "Orlando Bloom"),
    ("jaws", "Jaws (film)", "Jaws is a 1975 thriller about a great white shark that attacks swimmers at a summer resort. Its mechanical shark often failed during shooting. The film was directed by Steven Spielberg, then 26 years old.", "Who directed Jaws?", "Steven Spielberg", "George Lucas"),
    ("the-godfather", "The Godfather", "The Godfather is a 1972 film about a New York crime family. It is based on a novel by Mario Puzo. It was directed by Francis Ford Coppola.", "Who directed The Godfather?", "Francis Ford Coppola", "Martin Scorsese"),
    ("magic-flute", "The Magic Flute", "The Magic Flute is an opera in two acts, first staged in Vienna in 1791. Its story follows a prince who must pass trials to win a princess. The music was composed by Wolfgang Amadeus Mozart in the last year of his life.", "Who composed The Magic Flute?", "Wolfgang Amadeus Mozart", "Joseph Haydn"),
    ("four-seasons", "The Four Seasons", "The Four Seasons is a set of four violin concertos, each depicting a season of the year. They were published in Amsterdam in 1725. The composer was Antonio Vivaldi, a priest and teacher in Venice.", "Who composed The Four Seasons?", "Antonio Vivaldi", "Arcangelo Corelli"),
    ("first-moonwalker", "Apollo 11", "Apollo 11 landed on the Moon in July 1969. Its lunar module, Eagle, touched down in the Sea of Tranquility. Neil Armstrong was the first to step out onto the surface.", "Who was the first person to walk on the Moon?", "Neil Armstrong", "Buzz Aldrin"),
    ("first-in-space", "Vostok 1", "Vostok 1 was launched from Baikonur in April 1961. It orbited the Earth once in 108 minutes. Its pilot, Yuri Gagarin, became the first human in space.", "Who was the first human in space?", "Yuri Gagarin", "Alexei Leonov"),
    ("first-us-president", "President of the United States", "The office of President of the United States was created by the Constitution of 1787. The first holder took the oath in New York in 1789. He was George Washington, who served two terms.", "Who was the first President of the United States?", "George Washington", "John Adams"),
    ("waterloo", "Napoleon", "Napoleon returned from exile on Elba in 1815. His final campaign ended on 18 June of that year. He was defeated at the Battle of Waterloo by British and Prussian armies.", "At which battle was Napoleon finally defeated?", "Waterloo", "Leipzig"),
    ("moon-landing-year", "Moon landing", "The first crewed landing on the Moon was the goal of the American Apollo programme. Two astronauts spent about a day on the surface. The landing took place in 1969.", "In which year did humans first land on the Moon?", "1969", "1972"),
    ("ww2-end", "Second World War", "The Second World War was fought by most of the world's nations. Germany surrendered in May and Japan in September. The war ended in 1945.", "In which year did the Second World War end?", "1945", "1947"),
    ("berlin-wall", "Berlin Wall", "The Berlin Wall divided East and West Berlin for 28 years. Crowds crossed it freely on the night of 9 November. It fell in 1989.", "In which year did the Berlin Wall fall?", "1989", "1991"),
    ("titanic-sinking", "RMS Titanic", "RMS Titanic was a British passenger liner on her first voyage to New York. She struck an iceberg in the North Atlantic in April. She sank in 1912 with the loss of more than 1,500 lives.", "In which year did the Titanic sink?", "1912", "1915"),
    ("human-bones", "Human skeleton", "The human skeleton supports the body and protects its organs. A newborn has around 270 bones, some of which fuse with age. An adult has 206 bones.", "How many bones are in the adult human body?", "206", "212"),
    ("water-boiling", "Water", "Water is a compound of hydrogen and oxygen. At sea level it freezes at 0 degrees Celsius. It boils at 100 degrees Celsius.", "At what temperature in degrees Celsius does water boil at sea level?", "100", "90"),
    ("largest-planet", "Largest planet", "Jupiter is a gas giant made mostly of hydrogen and helium. It has a storm larger than the Earth that has raged for centuries. Jupiter is the largest planet in the Solar System.", "What is the largest planet in the Solar System?", "Jupiter", "Saturn"),
    ("red-planet", "The Red Planet", "Mars is the fourth planet from the Sun. Iron oxide on its surface gives it a reddish colour. For this reason Mars is called the Red Planet.", "Which planet is known as the Red Planet?", "Mars", "Venus"),
    ("closest-star", "Nearest star", "Proxima Centauri is a small red dwarf star in the constellation Centaurus. It lies about 4.2 light years away. Proxima Centauri is the closest star to the Sun.", "What is the closest star to the Sun?", "Proxima Centauri", "Sirius"),
    ("gold-symbol", "Gold", "Gold is a dense, soft, yellow metal prized since antiquity. It does not rust or tarnish in air. Its chemical symbol is Au.", "What is the chemical symbol for gold?", "Au", "Ag"),
    ("hardest-mineral", "Hardest mineral", "Diamond is a form of carbon whose atoms are arranged in a rigid crystal. It is used to cut and polish other materials. Diamond is the hardest natural mineral.", "What is the hardest natural mineral?", "Diamond", "Quartz"),
    ("air-gas", "Earth's atmosphere", "The Earth's atmosphere is held in place by gravity. About a fifth of it is oxygen. The most common gas in it is nitrogen, at about 78 percent.", "What is the most common gas in the Earth's atmosphere?", "nitrogen", "argon"),
    ("photosynthesis", "Photosynthesis", "Photosynthesis is how plants turn light into chemical energy. It takes place in the chloroplasts of leaves. Plants take in carbon dioxide and give off oxygen.", "Which gas do plants take in for photosynthesis?", "carbon dioxide", "methane"),
    ("longest-river-africa", "Longest river in Africa", "The Nile flows north through eleven countries to the Mediterranean Sea. Its waters made farming possible in ancient Egypt. The Nile is the longest river in Africa.", "What is the longest river in Africa?", "Nile", "Congo"),
    ("highest-mountain", "Highest mountain", "Mount Everest lies in the Himalayas on the border between Nepal and China. It was first climbed in 1953. Mount Everest is the highest mountain on Earth above sea level.", "What is the highest mountain on Earth?", "Mount Everest", "K2"),
    ("largest-ocean", "Largest ocean", "The Pacific Ocean stretches from the Arctic to the Southern Ocean. It holds more than half of the Earth's free water. The Pacific is the largest ocean on Earth.", "What is the largest ocean on Earth?", "Pacific", "Atlantic"),
    ("sahara", "Largest hot desert", "The Sahara covers most of North Africa. Its dunes can rise to 180 metres. The Sahara is the largest hot desert in the world.", "What is the largest hot desert in the world?", "Sahara", "Kalahari"),
    ("japan-currency", "Currency of Japan", "Japan's currency is issued by the Bank of Japan in Tokyo. Coins and notes came into use in 1871. The currency is the yen.", "What is the currency of Japan?", "yen", "won"),
    ("brazil-language", "Languages of Brazil", "Brazil is the largest country in South America. Over two hundred languages are spoken there. Its official and most widely spoken language is Portuguese.", "What language is most widely spoken in Brazil?", "Portuguese", "Spanish"),
    ("olympics-2008", "2008 Summer Olympics", "The 2008 Summer Olympics opened on 8 August 2008. Athletes from 204 nations took part. The games were held in Beijing.", "Which city hosted the 2008 Summer Olympics?", "Beijing", "Shanghai"),
    ("eiffel-tower", "Eiffel Tower", "The Eiffel Tower is a wrought-iron lattice tower built for the World's Fair of 1889. It is 330 metres tall. It stands on the Champ de Mars in Paris.", "In which city is the Eiffel Tower?", "Paris", "Lyon"),
    ("statue-of-liberty", "Statue of Liberty", "The Statue of Liberty stands on an island in New York Harbor. It was dedicated in 1886. It was a gift to the United States from the people of France.", "Which country gave the Statue of Liberty to the United States?", "France", "Italy"),
    ("world-cup-2014", "2014 FIFA World Cup", "The 2014 FIFA World Cup was played in Brazil. The final was held at the Maracana Stadium in Rio de Janeiro. Germany won it 1-0 after extra time.", "Which country won the 2014 FIFA World Cup?", "Germany", "Argentina"),
    ("tallest-building", "Tallest building", "The Burj Khalifa is a skyscraper in Dubai that opened in 2010. It is 828 metres tall. The Burj Khalifa is the tallest building in the world.", "What is the tallest building in the world?", "Burj Khalifa", "Shanghai Tower"),
    ("largest-city-australia", "Largest city in Australia", "Sydney lies on the south-east coast of Australia. Its harbour is spanned by a steel arch bridge opened in 1932. Sydney is the largest city in Australia.", "What is the largest city in Australia?", "Sydney", "Melbourne"),
    ("largest-country", "Largest country", "Russia spans eleven time zones across Europe and Asia. It borders fourteen countries. Russia is the largest country in the world by area.", "What is the largest country in the world by area?", "Russia", "Canada"),
]


def check(fact: tuple[str, str, str, str, str, str]) -> None:
    doc_id, title, text, _, answer, other = fact
    whole = len(re.findall(rf"(?<!\w){re.escape(answer)}(?!\w)", text, re.IGNORECASE))
    if whole == 0 or whole != len(re.findall(re.escape(answer), text, re.IGNORECASE)):
        raise ValueError(f"{doc_id}: the answer {answer!r} must appear in the passage, and only as a whole word")
    if other.lower() in text.lower():
        raise ValueError(f"{doc_id}: the substitute {other!r} is already in the passage")
    if answer.lower() in title.lower():
        raise ValueError(f"{doc_id}: the title gives the answer away (titles are not altered)")


def main() -> None:
    for fact in FACTS:
        check(fact)
    if len({f[0] for f in FACTS}) != len(FACTS):
        raise ValueError("ids repeat")
    write_qa_set(
        HERE,
        ({"_id": doc_id, "title": title, "text": text} for doc_id, title, text, *_ in FACTS),
        (
            ({"_id": f"q-{doc_id}", "text": question, "answer": answer, "substitute": other}, doc_id)
            for doc_id, _, _, question, answer, other in FACTS
        ),
    )

if __name__ == "__main__":
    main()
