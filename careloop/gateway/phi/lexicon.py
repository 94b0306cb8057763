"""Word lists the name and place rules read: given names, surnames, medical eponyms, US cities and states.

Written for careloop (common US given names and surnames across the population's origins, the eponyms that
clinical text uses as plain nouns); nothing is downloaded. Lower-case; looked up by the lower-cased token.
"""

from __future__ import annotations


def words(block: str) -> frozenset[str]:
    """The whitespace-separated words of a block of text."""
    return frozenset(block.split())

FIRST_NAMES = words("""
aaron abby abdul abdullah abigail abraham ada adam adaeze adele adeline adrian adriana agnes ahmad ahmed aiden aisha
akira alan alana albert alberto alejandra alejandro alex alexa alexander alexandra alexis alfred alfredo ali alice
alicia alina alison allison alma alvin amanda amber amelia amina amir amit amy ana anan anand andre andrea andres
andrew andy angel angela angelica angelo anil anita ann anna anne annette annie anthony antoine antonio anya april
arjun armando arnold arthur arturo ashley ashok audrey aurora austin ava barbara barry beatrice becky ben benjamin
bernard bernice beth betty beverly bianca bill billy blake bob bobby bonnie brad bradley brandon brenda brent brett
brian briana bridget brittany brooke bruce bryan caleb cameron camila candace carl carla carlos carmen carol carole
caroline carolyn carrie casey catherine cathy cecilia celeste chad chandra charlene charles charlie charlotte chen
cheryl chidi chiamaka chinedu chloe chris christian christina christine christopher cindy claire clara clarence
claudia clayton clifford colin connie connor constance courtney craig crystal curtis cynthia daisy dale dana daniel
daniela danielle danny darius darlene darnell darren darryl dave david dean deborah debra deepak deirdre delia
denise dennis derek derrick desmond destiny devon dewayne diana diane diego dmitri dolores dominic donald donna
doreen doris dorothy douglas duane dustin dwayne dylan earl ebony eddie edgar edith edna eduardo edward edwin eileen
elaine eleanor elena eli elijah elizabeth ella ellen elliot eloise elsa emeka emily emma emmanuel enrique eric erica
erik erin ernest esperanza esther ethan eugene eunice eva evan evelyn everett fatima felicia felix fernando fiona
florence frances francesca francis francisco frank franklin fred freddie frederick gabriel gabriela gail gary gavin
gene geneva george georgia gerald geraldine gilbert gina giovanni gladys glen glenn gloria gordon grace graham greg
gregory guadalupe gustavo gwen hailey hannah harold harriet harry hassan hazel heather hector heidi helen henry
herbert herman hilda hiroshi holly howard hui hussein ian ibrahim ifeoma igor imani ines irene iris isaac isabel
isabella isaiah ivan jack jackie jackson jacob jacqueline jada jaime jake jamal james jamie jan jane janelle janet
janice jared jasmine jason javier jay jean jeanette jeff jeffrey jenna jennifer jenny jeremiah jeremy jerome jerry
jesse jessica jesus jill jim jimmy jin jo joan joanna joanne joaquin jocelyn jody joe joel john johnny jon jonathan
jordan jorge jose josefina joseph josephine joshua joy joyce juan juanita judith judy julia julian julie julio june
justin kamala kara karen kari karim karl kate katherine kathleen kathryn kathy katie kayla keisha keith kelly kelvin
ken kendra kenji kenneth kenya kerry kevin kim kimberly kirk kofi kristen kristin kumar kwame kyle lakisha lamar
lance larry latasha latoya laura lauren laurie lawrence leah lee leila leon leonard leroy leslie lester lila lillian
lily linda lindsay lindsey lisa liz lloyd logan lois lola lonnie lorena lorenzo loretta lori lorraine louis louise
lucas lucia lucille lucy luis luke luz lydia lynn mabel madeline madison mae maggie mahmoud malcolm malik mandy
manuel marc marcia marco marcus margaret margarita maria mariah marian marie marilyn mario marion marisol marjorie
mark marlene marsha marshall martha martin marvin mary mason mateo matthew maureen maurice max maxine megan mehmet
mei melanie melinda melissa melvin mercedes meredith mia michael michele michelle miguel mike mildred miles milton
mindy miranda miriam misty mitchell mohamed mohammed molly monica monique morgan muhammad myra myron nadia nancy
naomi natalia natalie natasha nathan nathaniel neha neil nelson nguyen nia nicholas nicole nikhil nina noah noel
nora norma norman nuno obinna oksana olga olivia omar oscar owen pablo paige pamela patricia patrick paul paula
pauline pedro peggy penny perry peter philip phillip phyllis pierre pooja preston priya rachel rafael rahul raj
rajesh ralph ramon ramona randall randy raquel raul ravi ray raymond rebecca regina reginald renee rhonda ricardo
richard rick ricky rita rob robert roberta roberto robin rochelle rodney rodrigo roger roland ronald ronnie rosa
rosalind rosemary ross roxanne ruby rudy russell ruth ryan sabrina sadie sal sally salvador sam samantha samir
samuel sandra sandy sanjay santiago sara sarah satoshi scott sean sergei sergio seth shanice shannon sharon shawn
sheila shelby shelly sherri sherry shirley shreya sidney simon sofia sonia sophia stacey stacy stanley stella
stephanie stephen steve steven sue sunil susan suzanne sylvia tamara tami tammy tanya tara tasha ted teresa terrance
terrence terri terry thelma theodore theresa thomas tiffany tim timothy tina todd tom tommy toni tony tonya tracey
traci tracy travis trevor troy tyler tyrone valerie vanessa vernon veronica vicki vickie victor victoria vijay
vincent viola violet virginia vivian wade wallace walter wanda warren wayne wei wendy wesley whitney willard william
willie wilma winston xavier xin yasmin yolanda yusuf yvette yvonne zachary zainab zoe zhang
""")

# Given names that are also common English words: a name only next to a surname, title or cue.
AMBIGUOUS_FIRST = words("""
april art august bill bob candy carol chase cliff dawn dean destiny faith frank gene grace hope iris ivy jack jay
joy june lance mark max may miles pat patience penny rose ruby sandy summer sunny will win
""")

SURNAMES = words("""
abbott acosta adams adeyemi agarwal aguilar ahmed alexander ali allen alvarez anderson andrews armstrong arnold
ashby bailey baker baldwin banda banks barker barnes barrett bates bauer becker bell bennett berg bishop black blair
boateng bradley brady brennan brooks brown bryant burke burns butler byrne caldwell campbell carlson carpenter
carroll carter castillo castro chambers chan chang chatterjee chavez chen cheng choi chopra chowdhury christensen
clark cohen cole coleman collins contreras cook cooper cortez cox crawford cruz cunningham curtis daniels das
davidson davies davis dawson delgado desai diaz dixon dominguez douglas doyle duarte duncan dunn edwards elliott
ellis estrada evans farrell ferguson fernandez figueroa fischer fisher fitzgerald fleming flores flynn ford foster
fowler fox francis franklin freeman fuller gallagher garcia gardner garza george gibson gill gomez gonzales gonzalez
gordon graham grant gray green greene griffin gupta gutierrez guzman hall hamilton hansen harper harris harrison
hart hawkins hayes henderson henry hernandez herrera hicks hill hoffman holland holmes hopkins horton howard howell
huang hudson hughes hunt hunter hussain ibrahim iyer jackson jacobs james jenkins jensen jimenez johnson johnston
jones jordan joseph joshi kaur kelly kennedy khan kim king klein knight kowalski kumar lam lambert lane larson
lawrence lawson le lee lewis li lim lin liu long lopez lowe lucas lynch malik mann marshall martin martinez mason
matthews mcbride mccarthy mcdonald mcgee mckinney medina mehta mendez mendoza mensah meyer miller mills mitchell
molina montgomery moore morales moreno morgan morris moss murphy murray myers nair nash navarro nelson newman ng
nguyen nichols nkemelu nowak obrien oconnor odom okafor okeke okonkwo oliver olson omar ortega ortiz osei owens
palmer park parker patel patterson payne pearson pena perez perkins perry peters peterson petrov phillips pierce
popescu porter powell powers price quinn ramirez ramos rao reddy reed reid reyes reynolds rhodes rice richards
richardson riley rivera roberts robertson robinson rodgers rodriguez rogers romero rose ross ruiz russell ryan saito
salazar sanchez sanders santiago santos schmidt schneider schultz scott shah sharma shaw shepherd silva simmons
simpson singh smith snyder soto spencer stanley steele stephens stevens stewart stone sullivan sutton suzuki tanaka
taylor thomas thompson torres tran tucker turner vargas vasquez vaughn vega wagner walker wallace walsh walters wang
ward warren washington watkins watson weaver webb weber wells west wheeler white williams williamson willis wilson
wong wood woods wright wu yamamoto yang young yu zhang zhao zimmerman
""")

# People's names used as the names of diseases, signs, tests, devices and procedures: never a patient's name
# unless a title or cue says so.
EPONYMS = words("""
addison alzheimer apgar asperger babinski barre barrett bell bells brugada burkitt chagas colles crohn cushing
danlos doppler down dupuytren ehlers epley ewing fallot foley gaucher ganz gehrig glasgow gram graves guillain
hartmann hashimoto heimlich hirschsprung hodgkin holter horner huntington kaposi kawasaki kegel korsakoff krebs lyme
marfan meniere munchausen murphy nissen osgood paget pap parkinson peyronie raynaud reye rett schlatter sjogren
sjögren stevens swan tay sachs tourette valsalva von wernicke whipple willebrand wilms wilson wolff parkinson's
alzheimer's crohn's hodgkin's addison's graves' cushing's huntington's raynaud's
""")

# What follows an eponym in clinical text ("Parkinson's disease", "Foley catheter", "Murphy sign").
EPONYM_HEADS = words("""
disease syndrome sign signs test tests lymphoma sarcoma palsy maneuver manoeuvre procedure catheter monitor tumor
tumour disorder phenomenon score scale ulcer fracture classification criteria reflex node nodes triad operation
repair fundoplication stain smear exercises exercise esophagus oesophagus contracture disease's dementia
encephalopathy thyroiditis ophthalmopathy anomaly tetralogy bodies body cell cells lung anemia wort
surgery angina technique method position rule effect guidelines guideline protocol approach
""")

US_STATES = {
    "AL": "alabama", "AK": "alaska", "AZ": "arizona", "AR": "arkansas", "CA": "california", "CO": "colorado",
    "CT": "connecticut", "DE": "delaware", "FL": "florida", "GA": "georgia", "HI": "hawaii", "ID": "idaho",
    "IL": "illinois", "IN": "indiana", "IA": "iowa", "KS": "kansas", "KY": "kentucky", "LA": "louisiana",
    "ME": "maine", "MD": "maryland", "MA": "massachusetts", "MI": "michigan", "MN": "minnesota",
    "MS": "mississippi", "MO": "missouri", "MT": "montana", "NE": "nebraska", "NV": "nevada",
    "NH": "new hampshire", "NJ": "new jersey", "NM": "new mexico", "NY": "new york", "NC": "north carolina",
    "ND": "north dakota", "OH": "ohio", "OK": "oklahoma", "OR": "oregon", "PA": "pennsylvania",
    "RI": "rhode island", "SC": "south carolina", "SD": "south dakota", "TN": "tennessee", "TX": "texas",
    "UT": "utah", "VT": "vermont", "VA": "virginia", "WA": "washington", "WV": "west virginia",
    "WI": "wisconsin", "WY": "wyoming", "DC": "district of columbia", "PR": "puerto rico",
}

CITIES = frozenset(c.strip() for c in """
albany, albuquerque, anaheim, anchorage, arlington, atlanta, aurora, austin, bakersfield, baltimore,
baton rouge, birmingham, boise, boston, buffalo, burlington, cambridge, charleston, charlotte, chattanooga,
chesapeake, chicago, chula vista, cincinnati, cleveland, colorado springs, columbia, columbus, dallas, dayton,
denver, des moines, detroit, durham, el paso, eugene, fargo, fort lauderdale, fort wayne, fort worth, fresno,
gainesville, glendale, grand rapids, greensboro, hartford, henderson, hialeah, honolulu, houston, huntsville,
indianapolis, jacksonville, jersey city, kansas city, knoxville, lansing, laredo, las vegas, lexington, lincoln,
little rock, long beach, los angeles, louisville, lubbock, madison, memphis, mesa, miami, milwaukee, minneapolis,
montgomery, nashville, new haven, new orleans, new york, newark, norfolk, oakland, oklahoma city, omaha, orlando,
pasadena, philadelphia, phoenix, pittsburgh, plano, portland, providence, provo, raleigh, reno, richmond,
riverside, rochester, sacramento, saint paul, salem, salt lake city, san antonio, san diego, san francisco,
san jose, santa ana, santa fe, savannah, scottsdale, seattle, shreveport, sioux falls, spokane, springfield,
st. louis, st louis, st. paul, stamford, stockton, syracuse, tacoma, tallahassee, tampa, toledo, topeka, tucson,
tulsa, virginia beach, wichita, wilmington, winston-salem, worcester, yonkers, brooklyn, queens, the bronx,
bronx, ann arbor, berkeley, boulder, cedar rapids, dearborn, evanston, flint, green bay, joliet, macon, peoria,
quincy, rockford, somerville, trenton, waco, worcester, akron, allentown, amarillo, asheville, bangor, billings,
bridgeport, camden, canton, concord, duluth, erie, fayetteville, frederick, gary, greenville, hoboken, ithaca,
kalamazoo, lafayette, lowell, marietta, mobile, modesto, naperville, newton, ogden, olympia, pensacola, pueblo,
roanoke, santa barbara, santa cruz, santa monica, scranton, sarasota, tempe, tuscaloosa, yakima, youngstown
""".replace("\n", " ").split(","))

# More given names across the origins of the US population (South Asian, West African, East Asian, Arabic,
# Slavic, Hispanic, Irish, Nordic), so a name with no title or cue is still found.
MORE_FIRST = words("""
aarav abena abhishek aditi aditya adwoa afua agnieszka ahmet aiko akosua akua alejandro aleksandra aleksei
alessandro alhassan amara ama amani amit ananya andrzej anjali ankit anuj arash arnav arturo asha ashwin ayaan
ayesha aylin babajide bartosz bilal bogdan caoimhe carlos chioma chukwuemeka cian ciara darko deepika dilip divya
dorota eilidh emre enrique eoin esi farah farid farhan femi folake gaurav gulnara hamid hana haruka haruto hyun
ifeanyi ilse ioana irina ishaan jakub jelena jiho jiwoo joao jorge jun kaito kamal kavya kemal kenta kiran krzysztof
kwabena kwaku lakshmi lucia lukasz magdalena mahnoor manish mariana marta mateusz mehdi milan min-jun minh mohan
nadia nadir nasrin natasha nikolai nkechi nnamdi obi oksana olumide oluwaseun omari pavel piotr pradeep prakash
rafael rania ravi reza rohan sakura sanjay saoirse seo-yeon shanthi shira shreya siddharth siobhan sneha soo-ah sota
sunita svetlana tadeusz takeshi tariq temitope thabo tiago tomasz tunde uchenna valentina vikram wojciech xiu yaw
yetunde yuki yusuf zanele zeynep zofia zoran
""")
MORE_SURNAMES = words("""
abara achebe adebayo afolabi agyeman akhtar alvarado amoah anand andersen appiah aquino arslan asante babatunde
banerjee barros bhatt bose cabrera calderon castellanos chaudhry chua correa dang das dlamini dominguez duong dvorak
eze fofanah fonseca gallo ghosh goldberg haddad haque hashemi ibeh ikeda im ivanova jablonski jankowski kapoor
karimi kaminski kazmierczak khalil kovacs kozlov kruger kuznetsov lewandowski lindqvist lozano machado mahmoud
marquez mazur menon mishra mohammed mukherjee nakamura nasser nowicki nwosu obi odhiambo ogunleye okoye olawale
onyango osei owusu pacheco pham popov qureshi rahman rajan ramos rosales sadeghi saleh sandoval sato schwartz
sepulveda shapiro sokolov suarez szymanski takahashi tiwari trinh valdez vasquez venkatesh verma volkov vu
wiśniewski wojcik yilmaz zamora zielinski
""")
FIRST_NAMES = FIRST_NAMES | AMBIGUOUS_FIRST | MORE_FIRST
SURNAMES = SURNAMES | MORE_SURNAMES
